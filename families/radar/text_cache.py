"""Radar's strings for the frozen text features on disk (training/text_cache.py):
every caption, order-swapped caption and zero-shot prompt of every split."""
from training.text_cache import (PACKED, UNBOUNDED_MB, load_text_cache, pack, text_cache_enabled,  # noqa: F401
                                 text_cache_path, unpack)
from training.text_cache import build_text_cache as _build


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


def build_text_cache(folder, text_cfg, datasets, precision="fp32", batch_size=256):
    """The cache file of radar's ``datasets`` ({split: TemporalNegatives})."""
    _build(folder, text_cfg, lambda: all_captions(datasets), precision, batch_size)
