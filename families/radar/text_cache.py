"""Frozen text features on disk, computed once per dataset (``model.text.disk_cache``).

A frozen text backbone maps a caption to the same hidden states in every
run: encode every caption of the dataset once and keep them beside the data
(fp16), so a series of experiments does not spend minutes on it in every
run (in the data folder when it is generated, else under data.cache_dir).
Off by default, since a single run only meets about a third of the
captions. The file name holds everything the stored outputs depend on (the
backbone, ``max_length``, the pooling: ``pooler`` stores the pooled output
too); a caption missing from the file is encoded as usual when it is met.
The model's in-memory caption cache is bounded (``model.text.cache_max_mb``):
loading a larger file keeps its most recent part, with a warning.
"""
import os
import warnings

import torch

from models.text_encoder import TextEncoder
from training.io import atomic_save

# The build keeps every caption it encodes (the file is the whole dataset's).
UNBOUNDED_MB = float(2 ** 30)


def text_cache_path(folder, text_cfg):
    t = text_cfg
    name = (t["model_name"] or "minilm").strip("/").replace("/", "_")
    return os.path.join(folder, "text_cache",
                        f"{name}_len{t['max_length']}_{t['pooling_strategy']}.pt")


def text_cache_enabled(text_cfg):
    t = text_cfg
    return bool(t.get("disk_cache", False) and t["freeze_backbone"] and not t["unfreeze_last_n"]
                and t["cache_features"])


def all_captions(datasets):
    """Every string the model will encode: captions, swapped captions, prompts.
    datasets: {split: TemporalNegatives}."""
    texts = set()
    for ds in datasets.values():
        for i, it in enumerate(ds.base.items):
            texts.update(it["captions"])
            texts.update(ds.swapped(i))
        texts.update(ds.base.action_prompts.values())
    return sorted(texts)


@torch.no_grad()
def build_text_cache(folder, text_cfg, datasets, batch_size=256):
    """Write the cache file unless it exists or the cache is off."""
    path = text_cache_path(folder, text_cfg)
    if os.path.exists(path) or not text_cache_enabled(text_cfg):
        return
    t = text_cfg
    enc = TextEncoder(model_name=t["model_name"], max_length=t["max_length"],
                      pooling_strategy=t["pooling_strategy"], cache_max_mb=UNBOUNDED_MB).eval()
    texts = all_captions(datasets)
    for i in range(0, len(texts), batch_size):
        enc(texts[i:i + batch_size])  # fills the encoder's caption cache
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_save(enc.cache_state(), path)


def load_text_cache(text_encoder, folder, text_cfg):
    """Fill ``text_encoder``'s caption cache from the file, if there is one."""
    path = text_cache_path(folder, text_cfg)
    if not (text_cache_enabled(text_cfg) and os.path.exists(path)
            and getattr(text_encoder, "cache_features", False)):
        return
    state = torch.load(path, map_location="cpu")
    text_encoder.load_cache(state)
    kept = text_encoder.cache_info()["captions"]
    if kept < len(state):
        warnings.warn(f"{path}: {len(state)} captions, but model.text.cache_max_mb="
                      f"{text_cfg['cache_max_mb']} keeps only {kept} in memory; the others are "
                      "encoded again when met (raise model.text.cache_max_mb to keep them all)")
