"""TimesCLIP evaluation: the model's modes are restored, the split is encoded
under the run's precision, and eval.py end to end on a tiny checkpoint of a
hand-built fields file, its metrics checked against a direct computation."""
import csv
import json
import os

import numpy as np
import pytest
import torch

import eval as eval_script
import train_stage1
from data.timesclip.dataset import FieldTable, YieldDataset
from data.timesclip.formats import value_columns
from data.timesclip.generate import BANDS
from families import timesclip as fam
from families.timesclip.evaluation import yield_metrics
from models.timesclip.model import TimesCLIP
from models.timesclip.yield_head import YieldModel
from tests.test_timesclip_stage2 import TINY
from training.checkpoint import load_checkpoint
from training.config import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(d_model=16, embed_dim=16, n_layers=1, n_heads=2, image_size=16, vision_patch=8,
             vision_width=16, vision_layers=1, dropout=0.0)
YEARS = {"train": 2018, "val": 2019, "test": 2020}
PER_YEAR = 8


def _write_fields(root):
    """Three years of PER_YEAR fields: seasonal curves with per-field phase and
    level, no gaps; returns the [N, 36, 7] series, [N] years and [N] yields."""
    rng = np.random.default_rng(0)
    t = np.arange(36)
    rows, series, years, yields = [], [], [], []
    for year in YEARS.values():
        for f in range(PER_YEAR):
            s = (1.0 + rng.uniform(0, 0.5, 7)[None] * np.sin(0.2 * t[:, None] + rng.uniform(0, 6, 7))
                 + 0.05 * rng.standard_normal((36, 7)))                       # [36, 7]
            series.append(s)
            years.append(year)
            yields.append(round(rng.uniform(2, 8), 4))
            vals = [f"{v:.5f}" for v in s.T.reshape(-1)]                      # band-major
            rows.append([f"f{f}", "r0", year, f"{yields[-1]:.4f}"] + vals)
    os.makedirs(root)
    with open(os.path.join(root, "fields.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["field_id", "region", "year", "yield_t_ha"] + value_columns(BANDS))
        w.writerows(rows)
    return np.asarray(series, np.float64), np.asarray(years), np.asarray(yields)


def _args(root):
    """Tiny TimesCLIP on the hand-built file (a user's folder: not generated)."""
    return ["--family", "timesclip", "--data.root", str(root), "--data.generate", "false",
            "--data.train_years", "[2018]", "--data.val_years", "[2019]", "--data.test_years", "[2020]",
            *TINY]


def _cfg(root, *extra):
    return load_config(_args(root) + list(extra))


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    root = tmp_path_factory.mktemp("tc_eval") / "fields"
    series, years, yields = _write_fields(str(root))
    return root, series, years, yields


def test_evaluate_restores_every_module_mode(fields):
    root = fields[0]
    cfg = _cfg(root, "--precision", "fp32")
    ds = fam.build_datasets(cfg)["val"]
    model = fam.build_model(cfg).train()
    model.language.eval()                      # e.g. a frozen tower stays in eval
    fam.evaluate(model, None, ds, cfg, torch.device("cpu"))
    assert model.training and model.vision.training and model.head.training
    assert not model.language.training and not model.language.body.training
    # stage 2's metrics too
    t = FieldTable.from_config(cfg["data"])
    ym = YieldModel(TimesCLIP(**SMALL), 36, hidden=8).train()
    ym.encoder.eval()
    yield_metrics(ym, YieldDataset(t, "val"), cfg, torch.device("cpu"))
    assert ym.training and ym.head.training and not ym.encoder.training


def test_evaluate_encodes_under_the_runs_precision(fields):
    root = fields[0]
    cfg = _cfg(root, "--precision", "amp_bf16")
    ds = fam.build_datasets(cfg)["val"]
    model = fam.build_model(cfg)
    seen = []
    model.vision.register_forward_pre_hook(   # the chart view, in both stages
        lambda m, args: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    m = fam.evaluate(model, None, ds, cfg, torch.device("cpu"))
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    assert np.isfinite(m["completion_rmse"])
    seen.clear()
    t = FieldTable.from_config(cfg["data"])
    ym = YieldModel(model, 36, hidden=8)
    yield_metrics(ym, YieldDataset(t, "test"), cfg, torch.device("cpu"))
    assert seen and all(s == (True, torch.bfloat16) for s in seen)


class _Constant(torch.nn.Module):
    """A stage-2 model that predicts ``value`` (standardised yield) for all."""

    def __init__(self, value):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))

    def forward(self, batch):
        return self.value * torch.ones(len(batch["x"]))                       # [B]


def test_yield_metrics_equal_a_hand_computation(fields):
    root, _, years, yields = fields
    cfg = _cfg(root, "--precision", "fp32")
    t = FieldTable.from_config(cfg["data"])
    ytr, y = yields[years == YEARS["train"]], yields[years == YEARS["test"]]
    mu, sd = ytr.mean(), ytr.std() + 1e-6                                # training years only
    m = yield_metrics(_Constant(0.5), YieldDataset(t, "test"), cfg, torch.device("cpu"))
    pred = mu + 0.5 * sd                                                 # t/ha, for every field
    ss = ((y - y.mean()) ** 2).sum()
    assert m["yield_rmse"] == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)), rel=1e-5)
    assert m["yield_mae"] == pytest.approx(np.mean(np.abs(pred - y)), rel=1e-5)
    assert m["yield_r2"] == pytest.approx(1 - ((pred - y) ** 2).sum() / ss, rel=1e-5)
    assert m["yield_r2_mean"] == pytest.approx(1 - ((mu - y) ** 2).sum() / ss, rel=1e-5)
    assert m["loss"] == pytest.approx(np.mean(((pred - y) / sd) ** 2), rel=1e-5)
    assert m["beats_ridge"] == float(m["yield_r2"] > m["yield_r2_ridge"])


def _ranks(q, g):
    """Rank of each query's own item (1 = best; ties count against it), by a
    double loop over cosine similarities."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return np.array([sum(q[i] @ g[j] >= q[i] @ g[i] for j in range(len(g))) for i in range(len(q))])


def test_eval_script_end_to_end_on_a_tiny_checkpoint(fields, tmp_path):
    root, series, years, _ = fields
    run = train_stage1.main(_args(root) + ["--batch-size", "4", "--max-steps", "2", "--precision", "fp32",
                                           "--logs", str(tmp_path / "logs"), "--name", "tc",
                                           "--device", "cpu"])
    ckpt_path = os.path.join(run, "checkpoints", "latest.pt")
    out = tmp_path / "eval"
    eval_script.main(["--checkpoint", ckpt_path, "--out", str(out), "--device", "cpu"])
    with open(out / "metrics.json") as f:
        m = json.load(f)
    assert os.path.getsize(out / "forecasts.png") > 1000

    # The test year standardised by the training year's statistics, by hand.
    train = series[years == YEARS["train"]]
    mean, std = train.mean((0, 1)), train.std((0, 1)) + 1e-6
    z = (series[years == YEARS["test"]] - mean) / std                     # [8, 36, 7]
    x, y = z[:, :18], z[:, 18:]
    assert m["completion_rmse_persistence"] == pytest.approx(
        np.sqrt(np.mean((x[:, -1:] - y) ** 2)), rel=1e-4)
    ndvi = BANDS.index("NDVI")
    assert m["completion_rmse_climatology"] == pytest.approx(
        np.sqrt(np.mean((((series[years == YEARS["train"]] - mean) / std)[:, 18:].mean(0) - y) ** 2)),
        rel=1e-4)

    # The checkpoint's model on those windows: forecast error and retrieval.
    ckpt = load_checkpoint(ckpt_path)
    model = fam.build_model(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        o = model.eval()({"x": torch.tensor(x, dtype=torch.float32)})
    err = o["forecast"].double().numpy() - y
    assert m["completion_rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-4)
    assert m["completion_mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-4)
    raw = np.sqrt(np.mean((err * std) ** 2, (0, 1)))                      # [7] band units
    span = (y * std).max((0, 1)) - (y * std).min((0, 1))
    assert m["completion_rmse_pct_range"] == pytest.approx(np.mean(100 * raw / span), rel=1e-4)
    assert m["completion_rmse_ndvi"] == pytest.approx(raw[ndvi], rel=1e-4)
    vis, lang = o["vision"].mean(1).numpy(), o["language"].mean(1).numpy()
    r = _ranks(lang, vis)
    assert m["l2v_R@1"] == pytest.approx(np.mean(r <= 1))
    assert m["l2v_mean_rank"] == pytest.approx(r.mean())
    assert m["v2l_mean_rank"] == pytest.approx(_ranks(vis, lang).mean())
