"""TimesCLIP family (seed 003): crop time series as charts and as tokens.

Stage 1 (``train_stage1.py --family timesclip``): first ``input_len`` ten-day
composites -> the next ``pred_len`` (MSE + lambda * alignment).
Stage 2 (``train_stage2.py --family timesclip --init CKPT``): the whole season
-> yield, reusing the stage-1 encoder (families/timesclip/stage2.py).

Data: ``data.root`` holds ``fields.csv`` generated there
(data/timesclip/generate.py) or, with ``data.generate false``, a user's
folder in either layout of data/timesclip/formats.py (the project's
``fields.csv``, or the crop-yield port's ``extract{YEAR}_*.csv``), found by
looking (``data.format`` forces one) and never written to. Nothing derived
from the data is cached on disk (the frozen chart cache is in memory). The
pieces live in data/timesclip/, models/timesclip/,
losses/timesclip_loss.py and families/timesclip/evaluation.py; this module
only wires them to the loop.
"""
from data.cache import check_user_folder
from data.timesclip.dataset import CompletionDataset, FieldTable, collate  # noqa: F401
from data.timesclip.formats import describe, find_layout
from data.timesclip.generate import ensure_fields
from families.timesclip.evaluation import completion_metrics
from families.timesclip.stage2 import build_stage2  # noqa: F401
from losses.timesclip_loss import TimesCLIPLoss
from models.timesclip.model import build_timesclip


def prepare_data(cfg):
    d = cfg["data"]
    if d["generate"]:
        find_layout(d)   # checks data.format and data.bands before anything is written
        ensure_fields(d["root"], d["n_regions"], d["years"], d["fields_per_region_year"], d["gen_seed"])
        return
    check_user_folder(d["root"], "TimesCLIP data")
    root, layout = find_layout(d)
    how = "forced by --data.format" if d["format"] not in ("", "auto") else "detected"
    print(f"TimesCLIP data: {root}: {layout.name} layout ({how}): {describe(root, layout)}; "
          f"bands {', '.join(d['bands'])}", flush=True)


def build_datasets(cfg):
    t, d = FieldTable.from_config(cfg["data"]), cfg["data"]
    print(t.summary(), flush=True)
    return {s: CompletionDataset(t, s, d["input_len"], d["pred_len"]) for s in ("train", "val", "test")}


def build_model(cfg):
    return build_timesclip(cfg["model"], cfg["data"])


def build_criterion(cfg, rank=0, world_size=1):
    lc = cfg["loss"]
    return TimesCLIPLoss(lc["align"], lc["align_level"], lc["align_weight"], lc["level_weights"],
                         local_loss=cfg["local_loss"], gather_with_grad=cfg["gather_with_grad"],
                         rank=rank, world_size=world_size)


def evaluate(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    return completion_metrics(model, dataset, cfg, device, out_dir, writer, step)
