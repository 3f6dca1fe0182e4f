"""Radar CLIP family (seeds 000 and 001): the contract of families/__init__.py.

Data: data/radar/sim.py writes the project's three-view format under
``data.root``, captions from ``data.captions`` (data/radar/captions.py:
diverse or the template of before; missing = template); data/radar/humanml3d.py simulates a HumanML3D folder's
motions into it (``data.humanml3d``); with ``data.generate false`` the
folder is the user's, never written into, in either layout of
data/radar/layouts.py (found by looking, or ``data.format``); the log says
which. data/radar/dataset.py reads them all; data/radar/temporal.py adds
each clip's order-swapped caption (from ``meta/{id}.json``) as a hard
negative. Model: models/radar/ (CLIPModel: the model.radar tower -- RadarEncoder,
or a pretrained ViT with model.radar.pretrained -- and the model.text tower);
criterion: losses/radar_loss.py. Evaluation, figures and stage 2 are the
modules beside this one.
"""
import os
import warnings

from data.cache import UserDataError, check_user_folder, derived_dir, resolve_root
from data.radar.dataset import RadarTextDataset, check_layout_views, collate_radar
from data.radar.humanml3d import simulate_humanml3d
from data.radar.layouts import data_dir, find_layout
from data.radar.sim import ensure_radar_dataset
from data.radar.temporal import TemporalNegatives
from families.radar.evaluation import evaluate_radar
from families.radar.stage2 import build_radar_stage2
from families.radar.text_cache import all_captions
from training.text_cache import build_text_cache, load_text_cache
from losses.radar_loss import build_radar_criterion
from models.radar.clip_model import build_clip_model

DATA_KEYS = ("max_motion_length", "min_motion_len", "max_text_len", "unit_length",
             "log_norm", "radar_views", "filter_invalid", "frame_rate", "memory_cache_mb")

collate = collate_radar  # tensors stacked, has_swap a BoolTensor, captions as lists
_told = set()


def _log_once(msg):
    # the splits (and the text cache, and eval) build datasets of one folder: say it once
    if msg not in _told:
        _told.add(msg)
        print(msg)


def _warn_once(msg):
    if msg not in _told:
        _told.add(msg)
        warnings.warn(msg)


def data_root(cfg):
    """data.root, absolute (relative to the current directory)."""
    return resolve_root(cfg["data"]["root"])


def cache_dir(cfg):
    """Where the text-feature cache goes: inside generated data (our folder);
    for a user's folder, which is never written into, under data.cache_dir
    (default data_cache/ in the current directory)."""
    d = cfg["data"]
    return derived_dir(data_root(cfg), "radar", d["generate"], d["cache_dir"])


def simulate_from_humanml3d(cfg):
    """data.humanml3d's motions as radar clips in data.root (ensure_generated's
    rules: reused when built for the same source and parameters). Only clips
    the loader keeps are simulated: min(T) = max(min_frames, min_motion_len),
    T < max_frames (0: no bound)."""
    d = cfg["data"]
    params = {"seed": d["seed"], "frame_rate": float(d["frame_rate"]),
              "min_frames": max(int(d["min_frames"] or 1), int(d["min_motion_len"])),
              "max_frames": int(d["max_frames"]) - 1 if d["max_frames"] else None,
              **(d.get("sim") or {})}
    return simulate_humanml3d(d["humanml3d"], data_root(cfg), workers=int(d["gen_workers"] or 1), **params)


def prepare_data(cfg):
    d, root = cfg["data"], data_root(cfg)
    if d["humanml3d"]:
        if not d["generate"]:
            raise UserDataError("--data.humanml3d simulates radar clips into data.root, which needs "
                                "--data.generate true (to train on an earlier build, drop --data.humanml3d)")
        simulate_from_humanml3d(cfg)
        _log_once(f"radar data: {root}: radar clips simulated from the HumanML3D folder "
                  f"{resolve_root(d['humanml3d'])} (project layout)")
    elif d["generate"]:
        # data.captions / num_captions missing (a config from before issue 13): the data of then
        sim = {**(d.get("sim") or {}), "captions": d.get("captions") or "template"}
        if d.get("num_captions") is not None:
            sim["num_captions"] = int(d["num_captions"])
        ensure_radar_dataset(root, d["num_train"], d["num_val"], d["num_test"], seed=d["seed"],
                             workers=int(d["gen_workers"] or 1), **sim)
    else:
        check_user_folder(root, "radar data")
        lay = find_layout(root, d["format"])
        where = data_dir(root, lay.name)
        _log_once(f"radar data: {root}: {lay.name} layout detected"
                  f"{' (forced by --data.format)' if d['format'] else ''}"
                  f"{f' in {os.path.relpath(where, root)}/' if where != root else ''}: {lay.description}")
        check_layout_views(root, lay.name, d["radar_views"])
    # every split is read only when the file is built
    build_text_cache(cache_dir(cfg), cfg["model"]["text"], lambda: all_captions(build_datasets(cfg)),
                     cfg["precision"])


def build_datasets(cfg):
    d, root = cfg["data"], data_root(cfg)
    opts = {k: d[k] for k in DATA_KEYS if k in d}   # a config from before a key: its default
    layout = find_layout(root, None if d["generate"] else d["format"]).name
    data = {split: TemporalNegatives(
                RadarTextDataset(root, split, seed=cfg["seed"], train=split == "train", layout=layout,
                                 t_range=(d["min_frames"] or None, d["max_frames"] or None),
                                 split_files=d[f"{split}_split"], split_ratios=d[f"{split}_ratio"],
                                 data_seed=d["seed"], log=_log_once, **opts),
                seed=cfg["seed"])
            for split in ("train", "val", "test")}
    val, test = ([(it["npz"], it["offset"]) for it in data[s].base.items] for s in ("val", "test"))
    if val == test:   # mmExpert's split script writes test.json = val.json
        _warn_once(f"{root}: the val split equals the test split: checkpoints chosen on val "
                   "(monitor) are chosen on the test set; pass --data.val_split with a list of its own")
    return data


def build_model(cfg):
    model = build_clip_model(cfg)
    load_text_cache(model.text_encoder, cache_dir(cfg), cfg["model"]["text"], cfg["precision"])
    return model


def build_criterion(cfg, rank=0, world_size=1):
    return build_radar_criterion(cfg, rank, world_size)


def evaluate(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    return evaluate_radar(model, criterion, dataset, cfg, device, out_dir, writer, step)


def build_stage2(cfg, stage1_model_state, mode):
    return build_radar_stage2(cfg, build_datasets(cfg), stage1_model_state, mode)
