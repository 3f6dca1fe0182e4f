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


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny tensors: a second intra-op thread only adds overhead,
    and on a shared, oversubscribed CPU the thread pool's spinning costs ~4x."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def train_steps(fam, model, criterion, dataset, steps, batch_size, lr=3e-3):
    """A few AdamW steps on random batches of ``dataset`` through a family's
    collate and criterion (epoch 0): the short runs of the training tests."""
    import torch
    params = [p for p in list(model.parameters()) + list(criterion.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    for step in range(steps):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(step)
        idx = torch.randperm(len(dataset))[:batch_size].tolist()
        batch = fam.collate([dataset[i] for i in idx])
        loss, _ = criterion(model(batch), batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
