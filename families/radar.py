"""Radar CLIP family (seeds 000 and 001): the contract of families/__init__.py.

Data: data/radar_sim.py writes the mmExpert/HumanML3D format under
``data.root``; data/radar_dataset.py reads it (simulated or real). This
module adds what temporal learning needs on top: each clip's order-swapped
caption (from ``meta/{id}.json``) as a hard negative.
"""
import os

import torch
from torch.utils.data import Dataset

from training.config import REPO_ROOT
from training.data import item_rng

DATA_KEYS = ("max_motion_length", "min_motion_len", "max_text_len", "unit_length",
             "log_norm", "radar_views")


def data_root(cfg):
    root = cfg["data"]["root"]
    return root if os.path.isabs(root) else os.path.join(REPO_ROOT, root)


def swapped_captions(meta, path):
    """The clip's order-swapped captions from its meta dict ([] if none)."""
    swapped = meta.get("order_swapped_captions", [])
    if not isinstance(swapped, list):
        raise ValueError(f"{path}: field 'order_swapped_captions' must be a list of captions "
                         "(the swapped-order paraphrases; [] for a single action)")
    return swapped


def swapped_for(caption, captions, swapped, rng):
    """The order-swapped paraphrase matching ``caption`` when the lists are
    parallel, else a random one."""
    if not swapped:
        return None
    if len(swapped) == len(captions) and caption in captions:
        return swapped[captions.index(caption)]
    return swapped[int(rng.integers(len(swapped)))]


class TemporalNegatives(Dataset):
    """Adds ``swapped_caption`` (str) and ``has_swap`` (bool) to every item of
    a RadarTextDataset, from the clip's ``meta/{id}.json``; clips without one
    (single actions, real data without meta) get their own caption and
    has_swap False, and the loss and the metric skip them."""

    def __init__(self, base, root, seed=0):
        self.base, self.root, self.seed, self.epoch = base, root, seed, 0
        self._swapped = {}

    def __len__(self):
        return len(self.base)

    def set_epoch(self, epoch):
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def swapped(self, i):
        if i not in self._swapped:
            self._swapped[i] = swapped_captions(self.base.clip_meta(i), self.base.items[i]["meta"])
        return self._swapped[i]

    def __getitem__(self, i):
        item = dict(self.base[i])
        swapped = swapped_for(item["caption"], item["captions"], self.swapped(i),
                              item_rng(self.seed + 7, self.epoch, i))
        item["swapped_caption"] = swapped if swapped is not None else item["caption"]
        item["has_swap"] = swapped is not None and swapped != item["caption"]
        return item


# --- frozen text features, computed once per dataset ---------------------------
def text_cache_path(cfg):
    t = cfg["model"]["text"]
    name = (t["model_name"] or "minilm").strip("/").replace("/", "_")
    return os.path.join(data_root(cfg), "text_cache", f"{name}_len{t['max_length']}.pt")


def _text_cache_enabled(cfg):
    t = cfg["model"]["text"]
    return (t.get("disk_cache", False) and t["freeze_backbone"] and not t["unfreeze_last_n"]
            and t["cache_features"])


def all_captions(cfg):
    """Every string the model will encode: captions, swapped captions, prompts."""
    texts = set()
    for ds in build_datasets(cfg).values():
        for i, it in enumerate(ds.base.items):
            texts.update(it["captions"])
            texts.update(ds.swapped(i))
        texts.update(ds.base.action_prompts.values())
    return sorted(texts)


@torch.no_grad()
def build_text_cache(cfg, batch_size=256):
    """A frozen text backbone maps a caption to the same hidden states in
    every run: encode every caption of the dataset once and keep them on disk
    beside the data (fp16), so a series of experiments does not spend minutes
    on it in every run (``model.text.disk_cache``; off by default, since a
    single run only meets about a third of the captions)."""
    from models.text_encoder import TextEncoder
    path = text_cache_path(cfg)
    if os.path.exists(path) or not _text_cache_enabled(cfg):
        return
    t = cfg["model"]["text"]
    enc = TextEncoder(model_name=t["model_name"], max_length=t["max_length"],
                      pooling_strategy=t["pooling_strategy"]).eval()
    texts = all_captions(cfg)
    for i in range(0, len(texts), batch_size):
        enc(texts[i:i + batch_size])  # fills enc._cache
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(enc.cache_state(), tmp)
    os.replace(tmp, path)


def load_text_cache(model, cfg):
    path = text_cache_path(cfg)
    enc = model.text_encoder
    if not (_text_cache_enabled(cfg) and os.path.exists(path) and getattr(enc, "cache_features", False)):
        return
    cache = torch.load(path, map_location="cpu")
    enc.load_cache(cache)


# --- the contract -------------------------------------------------------------
def prepare_data(cfg):
    from data.radar_sim import ensure_radar_dataset
    d = cfg["data"]
    ensure_radar_dataset(data_root(cfg), d["num_train"], d["num_val"], d["num_test"],
                         seed=d["seed"], workers=d["gen_workers"], **(d.get("sim") or {}))
    build_text_cache(cfg)


def build_datasets(cfg):
    from data.radar_dataset import RadarTextDataset
    d, root = cfg["data"], data_root(cfg)
    opts = {k: d[k] for k in DATA_KEYS}
    return {split: TemporalNegatives(
                RadarTextDataset(root, split, seed=cfg["seed"], train=split == "train", **opts),
                root, seed=cfg["seed"])
            for split in ("train", "val", "test")}


def collate(items):
    from data.radar_dataset import collate_radar
    batch = collate_radar(items)
    batch["swapped_caption"] = [it["swapped_caption"] for it in items]
    batch["has_swap"] = torch.tensor([it["has_swap"] for it in items], dtype=torch.bool)
    return batch


def build_model(cfg):
    from models.clip_model import build_clip_model
    model = build_clip_model(cfg)
    load_text_cache(model, cfg)
    return model


def build_criterion(cfg, rank=0, world_size=1):
    from losses.radar_loss import build_radar_criterion
    return build_radar_criterion(cfg, rank, world_size)


def evaluate(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    from families.radar_eval import evaluate_radar
    return evaluate_radar(model, criterion, dataset, cfg, device, out_dir, writer, step)


def param_groups_lr(cfg):
    return dict(cfg.get("lr_multipliers") or {})


def build_stage2(cfg, stage1_model_state, mode):
    from families.radar_stage2 import build_radar_stage2
    return build_radar_stage2(cfg, stage1_model_state, mode)
