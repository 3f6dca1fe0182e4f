"""A short sCLAP training run through the family contract learns where the
two events come from, and the evaluation writes every metric and figure."""
import os

import torch

import families.sclap as fam
from tests.conftest import train_steps
from training.config import load_config

KEYS = ("t2a_R@1", "t2a_R@10", "a2t_R@1", "t2a_mAP@10", "temporal_acc", "spatial_acc", "doa_error_deg",
        "doa_error_deg_baseline", "modality_acc", "zeroshot_direction_acc", "gallery_size")
CPU = torch.device("cpu")


def test_short_training_learns_doa_and_writes_metrics(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(["--family", "sclap", "--data.root", str(tmp_path / "data"),
                       "--data.num_train", "32", "--data.num_val", "2", "--data.num_test", "8",
                       "--data.num_zeroshot", "8", "--data.gen_workers", "1",
                       "--model.channels", "[8,8,16]", "--model.embed_dim", "32",
                       "--model.temporal_heads", "4", "--epochs", "1", "--precision", "fp32"])
    fam.prepare_data(cfg)
    ds = fam.build_datasets(cfg)
    model, crit = fam.build_model(cfg), fam.build_criterion(cfg)
    train = ds["train"]
    before = fam.evaluate(model, crit, train, cfg, CPU)
    train_steps(fam, model, crit, train, steps=40, batch_size=8)
    # On the training clips (what 40 steps can learn): the attention head has
    # learned which frames belong to which event, beyond its untrained
    # energy-weighted average of both.
    after = fam.evaluate(model, crit, train, cfg, CPU)
    assert after["doa_error_deg"] < before["doa_error_deg"] - 5, (before["doa_error_deg"], after["doa_error_deg"])
    assert after["doa_error_deg"] < 30
    print(f"doa error before {before['doa_error_deg']:.1f}, after {after['doa_error_deg']:.1f} deg")
    test = fam.evaluate(model, crit, ds["test"], cfg, CPU, out_dir=str(tmp_path / "eval"))
    for k in KEYS:
        assert k in test, k
    assert test["gallery_size"] == 8
    for name in ("frontend", "doa_polar", "similarity"):   # log-mel + intensity panels, DOA, similarity
        assert os.path.getsize(tmp_path / "eval" / f"sclap_{name}.png") > 1000
