"""TimesCLIP family (seed 003): crop time series as charts and as tokens.

Stage 1 (``train_stage1.py --family timesclip``): first ``input_len`` ten-day
composites -> the next ``pred_len`` (MSE + lambda * alignment).
Stage 2 (``train_stage2.py --family timesclip --init CKPT``): the whole season
-> yield, reusing the stage-1 encoder. Data: ``data.path`` (a fields CSV in
the format of data/timesclip_dataset.py), or generated into ``data.root``.
"""
import json
import os

import torch
import torch.nn.functional as F

from data.timesclip_dataset import CompletionDataset, FieldTable, YieldDataset, collate  # noqa: F401
from data.timesclip_generate import generate
from families import timesclip_eval
from losses.timesclip_loss import TimesCLIPLoss
from models.timesclip_model import build_timesclip
from models.timesclip_yield import YieldModel
from training.config import REPO_ROOT

GEN_KEYS = ("n_regions", "years", "fields_per_region_year", "gen_seed")


def _root(cfg):
    root = cfg["data"]["root"]
    return root if os.path.isabs(root) else os.path.join(REPO_ROOT, root)


def fields_path(cfg):
    d = cfg["data"]
    if d.get("path"):
        return d["path"] if os.path.isabs(d["path"]) else os.path.join(REPO_ROOT, d["path"])
    return os.path.join(_root(cfg), "fields.csv")


def prepare_data(cfg):
    d = cfg["data"]
    if d.get("path"):
        if not os.path.exists(fields_path(cfg)):
            raise FileNotFoundError(f"{fields_path(cfg)}: data.path does not exist "
                                    f"(expected a TimesCLIP fields CSV)")
        return
    params = {k: d[k] for k in GEN_KEYS}
    meta = os.path.join(_root(cfg), "generator.json")
    if os.path.exists(fields_path(cfg)) and os.path.exists(meta):
        with open(meta) as f:
            if json.load(f) == json.loads(json.dumps(params)):
                return
    generate(_root(cfg), d["n_regions"], tuple(d["years"]), d["fields_per_region_year"], d["gen_seed"])
    with open(meta, "w") as f:
        json.dump(params, f)


_TABLES = {}


def load_table(cfg):
    d = cfg["data"]
    key = (fields_path(cfg), tuple(d["train_years"]), tuple(d["val_years"]), tuple(d["test_years"]))
    if key not in _TABLES:
        _TABLES[key] = FieldTable(*key)
    return _TABLES[key]


def build_datasets(cfg):
    t, d = load_table(cfg), cfg["data"]
    return {s: CompletionDataset(t, s, d["input_len"], d["pred_len"]) for s in ("train", "val", "test")}


def build_model(cfg):
    return build_timesclip(cfg["model"], cfg["data"])


def build_criterion(cfg, rank=0, world_size=1):
    lc = cfg["loss"]
    return TimesCLIPLoss(lc["align"], lc["align_level"], lc["align_weight"], lc["level_weights"],
                         local_loss=cfg["local_loss"], gather_with_grad=cfg["gather_with_grad"],
                         rank=rank, world_size=world_size)


def evaluate(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    return timesclip_eval.completion_metrics(model, dataset, device, out_dir, writer, step,
                                             cfg["eval"]["plot_samples"])


def build_stage2(cfg, stage1_model_state, mode):
    s2 = cfg["stage2"]
    t = load_table(cfg)
    aug = dict(s2["augment"])
    datasets = {"train": YieldDataset(t, "train", aug, seed=cfg["seed"]),
                "val": YieldDataset(t, "val"), "test": YieldDataset(t, "test")}
    encoder = build_model(cfg)
    if stage1_model_state is not None:
        encoder.load_state_dict(stage1_model_state)   # strict: every stage-1 weight must fit
    model = YieldModel(encoder, t.d["series"].shape[1], s2["use_first_last"],
                       s2["use_forecast_error"], s2["use_raw"], s2["hidden"], s2["dropout"])

    def loss_fn(pred, batch):
        loss = F.mse_loss(pred.float(), batch["yield"].float())
        return loss, {"mse": loss.detach()}

    def evaluate_yield(model, dataset, cfg, device, out_dir=None):
        return timesclip_eval.yield_metrics(model, dataset, device, out_dir)

    return {"datasets": datasets, "collate": collate, "model": model, "encoder": encoder,
            "loss_fn": loss_fn, "evaluate": evaluate_yield}
