"""sCLAP's text disk cache (model.text.disk_cache, training/text_cache.py): the
file holds every string a training item hands the text tower, a model that
loads it encodes what an uncached one does, and building it draws nothing
from the run's seeded generator."""
import json
import os

import torch

from families import load_family
from training.config import load_config
from tests.text_cache_check import assert_loaded_cache_encodes_as_uncached
from training.text_cache import text_cache_path

fam = load_family("sclap")


def _cfg(root, *extra):
    return load_config(["--family", "sclap", "--data.root", root, "--data.gen_workers", "1",
                        "--data.num_train", "3", "--data.num_val", "1", "--data.num_test", "1",
                        "--data.num_zeroshot", "0", "--data.max_order", "2", "--precision", "fp32",
                        "--model.event_slots", "true", "--loss.event_weight", "0.5", *extra])


def test_the_file_holds_every_training_string_and_encodes_the_same(tmp_path):
    cfg = _cfg(str(tmp_path / "d"))
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    fam.prepare_data(cfg)
    assert torch.equal(torch.rand(3), before)          # the build left the seeded generator alone
    path = text_cache_path(fam.cache_dir(cfg), cfg["model"]["text"], "fp32")
    assert os.path.exists(path)
    stored = set(torch.load(path)["captions"])
    train = fam.build_datasets(cfg)["train"]
    for i in range(len(train)):
        for epoch in range(12):   # the caption index each epoch draws
            train.set_epoch(epoch)
            item = train[i]
            texts = item["captions"] + item["plain_captions"] + [c for two in item["event_captions"] for c in two]
            assert set(texts) <= stored, set(texts) - stored
    assert_loaded_cache_encodes_as_uncached(fam, cfg, _cfg(str(tmp_path / "d"), "--model.text.disk_cache", "false"),
                                            "text_encoder", stored)
