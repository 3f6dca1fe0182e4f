import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_YAML = os.path.join(ROOT, "tests", "tiny.yaml")


@pytest.fixture
def tiny_cfg():
    from training.config import load_config
    return load_config(["--config", TINY_YAML])
