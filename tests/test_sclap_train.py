"""A short sCLAP training run through the family contract learns where the
two events come from, and the evaluation writes every metric and figure."""
import os

import torch

import families.sclap as fam
import train_stage1
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


def test_accum_freq_2_ends_with_the_weights_of_accum_freq_1(tmp_path, one_torch_thread):
    """Through train_stage1.main: 3 steps of global batch 4 as 2 micro-batches
    of 2 give the weights of 3 steps of 4 at once (dropout off)."""
    args = ["--family", "sclap", "--data.root", str(tmp_path / "data"), "--data.num_train", "12",
            "--data.num_val", "2", "--data.num_test", "2", "--data.num_zeroshot", "0",
            "--data.gen_workers", "1", "--data.max_order", "2", "--model.channels", "[8,8,16]",
            "--model.embed_dim", "32", "--model.temporal_heads", "4", "--model.dropout", "0.0",
            "--precision", "fp32", "--workers", "0", "--batch-size", "4", "--max-steps", "3",
            "--val-every", "0", "--save-every", "0", "--logs", str(tmp_path / "logs")]
    ck = {}
    for k in (1, 2):
        train_stage1.main(args + ["--name", f"accum{k}", "--accum-freq", str(k)])
        ck[k] = torch.load(tmp_path / "logs" / f"accum{k}" / "checkpoints" / "latest.pt", weights_only=False)
        assert ck[k]["train_state"]["step"] == 3
    for part in ("model", "criterion"):
        for name, w in ck[1][part].items():
            torch.testing.assert_close(ck[2][part][name], w, atol=1e-5, rtol=1e-4, msg=f"{part}.{name}")
