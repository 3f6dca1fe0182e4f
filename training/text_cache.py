"""Frozen text features on disk, computed once per dataset (``model.text.disk_cache``),
for every family whose text tower is today's TextEncoder (radar, sCLAP, grounding: each
family lists its dataset's strings, families/<family>/__init__.py).

A frozen text backbone maps a caption to the same hidden states in every
run: encode every caption of the dataset once and keep them beside the data
(fp16), so a series of experiments does not spend minutes on it in every
run (in the data folder when it is generated, else under data.cache_dir).
The build encodes every caption in batches of similar length (little
padding), under the run's autocast (bf16 where the machine runs it natively)
and on every core (nothing else runs during data preparation): in a long run
that is several times cheaper than meeting the captions one batch at a time.
The file name holds everything the stored outputs depend on (the backbone,
``max_length``, the pooling: ``pooler`` stores the pooled output too, the
autocast dtype, and with ``unfreeze_last_n`` n > 0 that n: the file then holds
the frozen prefix's states, the input of the last n layers, which train); a
caption missing from the file is encoded as usual when it is met. The text
head and token dropout run after what is stored, so they share the file.
The model's in-memory caption cache is bounded (``model.text.cache_max_mb``):
loading a larger file keeps its most recent part, with a warning. The file
holds the states packed into a few large tensors (``pack``), which load in a
fraction of the time of one tensor per caption; files written before that
load as they are.
Only today's TextEncoder caches (a plain text model, frozen but for the last
unfreeze_last_n layers, no layer decay or lr multiplier: what
models/towers/text.build_text_encoder gives); any other text tower (a CLIP /
CLAP checkpoint's) encodes every batch, and the disk cache is skipped with a
note. ``text_cfg`` is the model.text section in
today's keys or a checkpoint's older ones (models/radar/clip_model.text_section);
keys a family's section does not have take TextEncoder's defaults (max_length
77, mean pooling, cache_features on).
"""
import os
import time
import warnings

import torch

from models.radar.clip_model import text_section
from models.text_encoder import TextEncoder
from models.towers import build_text_encoder
from training.io import atomic_save
from training.precision import autocast as make_autocast, resolve_precision
from training.resources import available_cores

# The build keeps every caption it encodes (the file is the whole dataset's).
UNBOUNDED_MB = float(2 ** 30)


ENCODER_DEFAULTS = {"max_length": 77, "pooling_strategy": "mean", "cache_features": True,
                    "disk_cache": False, "unfreeze_last_n": 0}


def _section(text_cfg):
    t = text_section(text_cfg)
    for k, v in ENCODER_DEFAULTS.items():
        t.setdefault(k, v)
    return t


def text_cache_path(folder, text_cfg, precision="fp32"):
    t = _section(text_cfg)
    name = (t["pretrained"] or "minilm").strip("/").replace("/", "_")
    # features computed under bf16/fp16 autocast differ from fp32 ones in the last bits
    dtype = {"amp": "_fp16", "amp_bf16": "_bf16"}.get(precision, "")
    # with the last n layers training, the file holds the frozen prefix's states
    n = t.get("unfreeze_last_n", 0)
    prefix = f"_prefix_last{n}" if n else ""
    return os.path.join(folder, "text_cache",
                        f"{name}_len{t['max_length']}_{t['pooling_strategy']}{prefix}{dtype}.pt")


def text_cache_enabled(text_cfg):
    t = _section(text_cfg)
    return bool(t.get("disk_cache", False) and t.get("freeze", False) and t["cache_features"])


@torch.no_grad()
def build_text_cache(folder, text_cfg, texts, precision="fp32", batch_size=256):
    """Write the cache file of ``texts`` (an iterable of str, or a zero-argument
    function returning one: only called when the file is built) unless it
    exists or the cache is off."""
    precision = resolve_precision(precision, "cpu")[0]   # the build runs on the CPU (auto: the CPU's choice)
    path = text_cache_path(folder, text_cfg, precision)
    if os.path.exists(path) or not text_cache_enabled(text_cfg):
        return
    t = _section(text_cfg)
    # no head: it runs after what is stored (and would draw from the seeded generator)
    # the run's seeded generator untouched (the encoder's projection draws its init): a run
    # that builds the file starts from the same weights as one that finds it
    with torch.random.fork_rng(devices=[]):
        enc = build_text_encoder(dict(t, cache_max_mb=UNBOUNDED_MB, head_layers=0)).eval()
    if not (isinstance(enc, TextEncoder) and enc.cache_features):
        print(f"text cache: model.text.disk_cache skipped: the text tower of "
              f"{t['pretrained']!r} is a {type(enc).__name__}, which encodes every batch")
        return
    texts = sorted(set(texts() if callable(texts) else texts))
    texts.sort(key=lambda c: (len(enc.tokenizer.tokenize(c)), c))  # batches of one length
    autocast = make_autocast(precision, torch.device("cpu"), "default")
    threads, t0 = torch.get_num_threads(), time.perf_counter()
    torch.set_num_threads(max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    try:
        for i in range(0, len(texts), batch_size):
            with autocast():
                enc.precompute(texts[i:i + batch_size])  # the backbone (or its frozen prefix) only
        print(f"text cache: {len(texts)} captions encoded once in {time.perf_counter() - t0:.0f} s "
              f"({precision}, {torch.get_num_threads()} threads) -> {path}")
    finally:
        torch.set_num_threads(threads)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_save(pack(enc.cache_state()), path)


PACKED = "structclip text cache, packed v1"


def pack(state):
    """{caption: (hidden [L, H], pooled [H] or None)} as a few large tensors:
    a file of tens of thousands of small tensors takes seconds to unpickle, one
    of a few large ones a fraction of that."""
    captions = list(state)
    hidden = [state[c][0] for c in captions]
    pooled = [state[c][1] for c in captions]
    packed = {"format": PACKED, "captions": captions,
              "lengths": torch.tensor([h.shape[0] for h in hidden], dtype=torch.long),
              "hidden": torch.cat(hidden) if hidden else torch.zeros(0, 0, dtype=torch.float16)}
    if captions and pooled[0] is not None:
        packed["pooled"] = torch.stack(pooled)
    return packed


def unpack(packed, copy=False):
    """``pack``'s inverse. The states are views into the file's tensors unless
    ``copy`` (then dropping some of them frees their memory)."""
    if packed.get("format") != PACKED:   # a file written before packing: the dict itself
        return packed
    hidden = packed["hidden"].split(packed["lengths"].tolist())
    pooled = packed["pooled"].unbind(0) if "pooled" in packed else [None] * len(hidden)
    if copy:
        hidden = [h.clone() for h in hidden]
        pooled = [None if p is None else p.clone() for p in pooled]
    return dict(zip(packed["captions"], zip(hidden, pooled)))


def load_text_cache(text_encoder, folder, text_cfg, precision="fp32"):
    """Fill ``text_encoder``'s caption cache from the file, if there is one."""
    path = text_cache_path(folder, text_cfg, precision)
    if not (isinstance(text_encoder, TextEncoder) and text_encoder.cache_features
            and text_cache_enabled(text_cfg) and os.path.exists(path)):
        return
    n = _section(text_cfg)["unfreeze_last_n"]
    if text_encoder.prefix_layers is not None:
        n_model = len(text_encoder.backbone.encoder.layer) - text_encoder.prefix_layers
    else:
        n_model = 0
    if n != n_model:   # the file's states enter another layer than the model's first trainable one
        raise ValueError(f"{path}: holds the states for model.text.unfreeze_last_n={n}, but the "
                         f"text encoder runs its last {n_model} layers on what it caches")
    packed = torch.load(path, map_location="cpu")
    # views into one tensor when all of it is kept; copies when the bound drops some
    fits = packed.get("format") != PACKED or (
        packed["hidden"].numel() * packed["hidden"].element_size() <= text_encoder.cache_max_bytes)
    state = unpack(packed, copy=not fits)
    text_encoder.load_cache(state)
    kept = text_encoder.cache_info()["captions"]
    if kept < len(state):
        warnings.warn(f"{path}: {len(state)} captions, but model.text.cache_max_mb="
                      f"{text_cfg['cache_max_mb']} keeps only {kept} in memory; the others are "
                      "encoded again when met (raise model.text.cache_max_mb to keep them all)")
