"""sCLAP evaluation: metrics against hand computations on constructed cases,
the dataset left as it was, encoding under the run's precision, and eval.py
end to end on a checkpoint of train_stage1."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval as eval_script
import families.sclap as fam
import train_stage1
from data.sclap.dataset import collate
from families.sclap.evaluation import triplet_metrics
from models.sclap.classical_doa import angular_error_deg
from training.config import load_config

TINY = ["--family", "sclap", "--data.num_train", "8", "--data.num_val", "4", "--data.num_test", "4",
        "--data.num_zeroshot", "4", "--data.gen_workers", "1", "--data.max_order", "2",
        "--model.channels", "[8,8,16]", "--model.embed_dim", "32", "--model.temporal_heads", "4",
        "--precision", "fp32", "--workers", "0"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sclap") / "data")
    cfg = load_config(TINY + ["--data.root", root, "--eval.figures", "false"])
    fam.prepare_data(cfg)
    torch.manual_seed(0)
    return cfg, fam.build_datasets(cfg), fam.build_model(cfg), fam.build_criterion(cfg)


def _unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_triplet_metrics_on_a_constructed_case():
    # Per item, the angle (deg) of each clip [pos, neg_t, neg_s] and of each
    # caption; every caption/clip pair's cosine is the cosine of their angle gap.
    audio_deg = [(0, 90, 90), (60, 30, 90), (60, 90, 30), (30, 120, 150)]
    text_deg = [(0, 180, 180), (0, 60, -90), (0, -90, 60), (0, 100, 120)]
    audio = torch.tensor([[_unit(d) for d in row] for row in audio_deg])   # [4, 3, 2]
    text = torch.tensor([[_unit(d) for d in row] for row in text_deg])
    m = triplet_metrics(audio, text)
    # pos caption (0 deg) closer to pos clip than to neg_t: items 0, 2, 3; than neg_s: 0, 1, 3;
    # nearest of the three: items 0 and 3
    assert m["temporal_acc"] == 0.75 and m["spatial_acc"] == 0.75 and m["threeway_acc"] == 0.5
    # pos clip closer to pos caption than to neg_t caption: gaps (0 vs 180), (60 vs 0),
    # (60 vs 150), (30 vs 70) -> items 0, 2, 3; than neg_s: (0 vs 180), (60 vs 150), (60 vs 0), (30 vs 90)
    assert m["temporal_acc_text"] == 0.75 and m["spatial_acc_text"] == 0.75


def test_doa_error_is_permutation_invariant_mean_angle():
    x, y, z = np.eye(3)
    pred = np.array([[x, y], [x, z], [2 * x, -y]])
    target = np.array([[y, x], [x, y], [x, y]])
    # swapped events: 0; one event right, one 90 deg off: 45; right (unnormalised), opposite: 90
    np.testing.assert_allclose(angular_error_deg(pred, target), [0.0, 45.0, 90.0], atol=1e-3)  # arccos near 1


def test_evaluate_leaves_the_dataset_as_it_was(tiny):
    cfg, ds, model, crit = tiny
    val = ds["val"]
    before = {k: id(v) for k, v in vars(val).items()}
    first = fam.evaluate(model, crit, val, cfg, CPU)
    assert {k: id(v) for k, v in vars(val).items()} == before
    cached = [f for f in os.listdir(val.cache_dir) if f.startswith("classical_doa_val_")]
    assert len(cached) == 1                      # the baseline is cached on disk, keyed by the clips
    second = fam.evaluate(model, crit, val, cfg, CPU)
    assert second["doa_error_deg_baseline"] == first["doa_error_deg_baseline"]
    assert {k: id(v) for k, v in vars(val).items()} == before


def test_evaluate_encodes_under_the_runs_precision(tiny):
    cfg, ds, model, crit = tiny
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.append((name, out.dtype)))
             for name, m in (("audio", model.sed_proj), ("text", model.text_head.out))]
    model.train()
    try:
        fam.evaluate(model, crit, ds["test"], dict(cfg, precision="amp_bf16"), CPU)
    finally:
        for h in hooks:
            h.remove()
    assert {n for n, _ in seen} == {"audio", "text"}
    assert all(dtype == torch.bfloat16 for _, dtype in seen), set(seen)
    assert model.training                        # train mode restored


def _angle(u, v):
    return math.degrees(math.acos(max(-1.0, min(1.0, float(u @ v) / float(u.norm() * v.norm())))))


def test_eval_script_end_to_end(tmp_path):
    data = str(tmp_path / "data")
    train_stage1.main(TINY + ["--data.root", data, "--logs", str(tmp_path / "logs"), "--name", "e2e",
                              "--max-steps", "2", "--batch-size", "4", "--eval.figures", "false"])
    ckpt = os.path.join(tmp_path, "logs", "e2e", "checkpoints", "latest.pt")
    out = tmp_path / "eval"
    eval_script.main(["--checkpoint", ckpt, "--out", str(out), "--device", "cpu"])
    written = json.loads((out / "metrics.json").read_text())
    assert written["gallery_size"] == 4

    # the same numbers by hand: each item encoded alone, compared one by one
    _, cfg, model, _, _ = eval_script.load_stage1(ckpt)
    test = fam.build_datasets(cfg)["test"]
    temporal, spatial, errors = [], [], []
    with torch.no_grad():
        for i in range(len(test)):
            item = test[i]
            f = model(collate([item]))
            a = F.normalize(f["audio"][0], dim=-1)                                # [3, D]
            for k in range(test.num_captions(i)):   # caption k of the three variants (5 when diverse)
                caps = [test.items[i][v]["captions"][k] for v in ("pos", "neg_t", "neg_s")]
                t = F.normalize(model(collate([dict(item, captions=caps)]))["text"][0], dim=-1)
                temporal.append(float(t[0] @ a[0] > t[0] @ a[1]))
                spatial.append(float(t[0] @ a[0] > t[0] @ a[2]))
            for pred, true in zip(f["doa"][0], item["doa"]):                   # [2, 3] per clip
                errors.append(min((_angle(pred[0], true[0]) + _angle(pred[1], true[1])) / 2,
                                  (_angle(pred[0], true[1]) + _angle(pred[1], true[0])) / 2))
    assert written["temporal_acc"] == pytest.approx(sum(temporal) / len(temporal))
    assert written["spatial_acc"] == pytest.approx(sum(spatial) / len(spatial))
    assert written["doa_error_deg"] == pytest.approx(sum(errors) / len(errors), abs=1e-3)
