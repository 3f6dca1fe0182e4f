"""Shared check of the families' text disk caches (training/text_cache.py)."""
import torch


def assert_loaded_cache_encodes_as_uncached(family, cfg, cfg_off, tower, stored, n=8):
    """Two models of the same seed, one built with the cache file (cfg), one
    without (cfg_off): the first holds every stored caption in memory, the
    second none, and both encode alike up to the file's fp16 rounding.
    ``tower``: the model's attribute holding its TextEncoder."""
    torch.manual_seed(0)
    cached = getattr(family.build_model(cfg).eval(), tower)
    torch.manual_seed(0)
    plain = getattr(family.build_model(cfg_off).eval(), tower)
    assert len(cached._cache) == len(stored) and not plain._cache
    caps = sorted(stored)[:n]
    with torch.no_grad():
        a, b = cached(caps), plain(caps)
    torch.testing.assert_close(a.features, b.features, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(a.tokens[a.mask], b.tokens[b.mask], atol=2e-3, rtol=2e-3)
