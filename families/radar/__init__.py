"""Radar CLIP family (seeds 000 and 001): the contract of families/__init__.py.

Data: data/radar/sim.py writes the mmExpert/HumanML3D format under
``data.root``; data/radar/dataset.py reads it (simulated or real);
data/radar/temporal.py adds each clip's order-swapped caption (from
``meta/{id}.json``) as a hard negative. Model: models/radar/ (RadarEncoder,
TextEncoder, CLIPModel); criterion: losses/radar_loss.py. Evaluation,
figures and stage 2 are the modules beside this one.
"""
from data.cache import check_user_folder, derived_dir, resolve_root
from data.radar.dataset import RadarTextDataset, collate_radar
from data.radar.sim import ensure_radar_dataset
from data.radar.temporal import TemporalNegatives
from families.radar.evaluation import evaluate_radar
from families.radar.stage2 import build_radar_stage2
from families.radar.text_cache import build_text_cache, load_text_cache, text_cache_enabled
from losses.radar_loss import build_radar_criterion
from models.radar.clip_model import build_clip_model

DATA_KEYS = ("max_motion_length", "min_motion_len", "max_text_len", "unit_length",
             "log_norm", "radar_views")

collate = collate_radar  # tensors stacked, has_swap a BoolTensor, captions as lists


def data_root(cfg):
    """data.root, absolute (relative to the current directory)."""
    return resolve_root(cfg["data"]["root"])


def cache_dir(cfg):
    """Where the text-feature cache goes: inside generated data (our folder);
    for a user's folder, which is never written into, under data.cache_dir
    (default data_cache/ in the current directory)."""
    d = cfg["data"]
    return derived_dir(data_root(cfg), "radar", d["generate"], d["cache_dir"])


def prepare_data(cfg):
    d, root = cfg["data"], data_root(cfg)
    if d["generate"]:
        ensure_radar_dataset(root, d["num_train"], d["num_val"], d["num_test"], seed=d["seed"],
                             workers=d["gen_workers"], **(d.get("sim") or {}))
    else:
        check_user_folder(root, "radar data (mmExpert format)")
    if text_cache_enabled(cfg["model"]["text"]):  # reading every split is not free: only then
        build_text_cache(cache_dir(cfg), cfg["model"]["text"], build_datasets(cfg),
                         cfg["precision"])


def build_datasets(cfg):
    d, root = cfg["data"], data_root(cfg)
    opts = {k: d[k] for k in DATA_KEYS}
    return {split: TemporalNegatives(
                RadarTextDataset(root, split, seed=cfg["seed"], train=split == "train", **opts),
                seed=cfg["seed"])
            for split in ("train", "val", "test")}


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
