"""Grounding's text disk cache (model.text.disk_cache): the file holds every
caption a training item serves, flipped ones ("left" <-> "right") included,
and a model that loads it encodes what an uncached one does."""
import os

import torch

from families import load_family
from training.config import load_config
from tests.text_cache_check import assert_loaded_cache_encodes_as_uncached
from training.text_cache import text_cache_path

fam = load_family("grounding")


def _cfg(root, *extra):
    return load_config(["--family", "grounding", "--data.root", root, "--data.num_train", "6",
                        "--data.num_val", "1", "--data.num_test", "1", "--data.gen_image_size", "64",
                        "--data.image_size", "32", "--model.vision_width", "32", "--model.vision_depth", "1",
                        "--model.vision_heads", "2", "--model.embed_dim", "32", "--model.crop_size", "16",
                        "--precision", "fp32", *extra])


def test_the_file_holds_every_served_caption_and_encodes_the_same(tmp_path):
    cfg = _cfg(str(tmp_path / "d"))
    fam.prepare_data(cfg)
    path = text_cache_path(fam.cache_dir(cfg), cfg["model"]["text"], "fp32")
    assert os.path.exists(path) and path.startswith(str(tmp_path / "d"))   # inside our generated folder
    stored = set(torch.load(path)["captions"])
    train = fam.build_datasets(cfg)["train"]
    served = set()
    for epoch in range(8):
        train.set_epoch(epoch)
        served |= {train[i]["caption"] for i in range(len(train))}
    assert any("left" in c or "right" in c for c in served)
    assert served <= stored, served - stored
    assert_loaded_cache_encodes_as_uncached(fam, cfg, _cfg(str(tmp_path / "d"), "--model.text.disk_cache", "false"),
                                            "text", stored)
