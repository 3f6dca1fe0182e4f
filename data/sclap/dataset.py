"""Loader for stClotho-style spatial triplet data (generated or real).

Reads <root>/stclotho_manifest.csv (columns: data/sclap/generate.MANIFEST_COLUMNS)
and the 4-channel FOA WAVs it names. Every problem is reported with the file,
the field and what was expected. The front end (log-mels + intensity vectors)
is computed once per split and cached as a float16 .npy (next to generated
data; elsewhere for a user's folder, see families/sclap), which is what lets
two CPU cores train on it.
"""
import csv
import hashlib
import json
import os
from collections import OrderedDict

import numpy as np
import torch
from scipy.io import wavfile
from torch.utils.data import Dataset

from data.cache import UserDataError
from data.sclap.generate import MANIFEST, MANIFEST_COLUMNS
from data.sclap.spatial import direction_vector, sector_of
from models.sclap.frontend import SpatialFrontEnd
from training.data import item_rng
from training.io import atomic_write

VARIANTS = ("pos", "neg_t", "neg_s")


class ManifestError(UserDataError):
    """A manifest row or audio file that does not match the stClotho-style format."""


def _float(row, key, path, line):
    try:
        return float(row[key])
    except (TypeError, ValueError):
        raise ManifestError(f"{path}, line {line}: field {key!r} must be a number "
                            f"(degrees or seconds), got {row[key]!r}") from None


def read_manifest(root):
    """All rows of the manifest as dicts, event angles parsed to floats."""
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: manifest not found (expected an stClotho-style "
                                f"CSV with columns {MANIFEST_COLUMNS})")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}; expected {MANIFEST_COLUMNS}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if row["variant"] not in VARIANTS + ("single",):
                raise ManifestError(f"{path}, line {line}: field 'variant' must be one of "
                                    f"{VARIANTS + ('single',)}, got {row['variant']!r}")
            n_events = 1 if row["variant"] == "single" else 2
            for e in range(1, n_events + 1):
                for k in ("azimuth", "elevation"):
                    row[f"event{e}_{k}"] = _float(row, f"event{e}_{k}", path, line)
                if not row[f"event{e}_class"]:
                    raise ManifestError(f"{path}, line {line}: field 'event{e}_class' is empty")
            if not row["caption"].strip():
                raise ManifestError(f"{path}, line {line}: field 'caption' is empty")
            row["line"] = line
            rows.append(row)
    return rows


def group_triplets(rows, split, path="manifest"):
    """{item_id: {variant: row}} for one split, in file order; every item needs all three variants."""
    items = OrderedDict()
    for r in rows:
        if r["split"] == split and r["variant"] != "single":
            items.setdefault(r["item_id"], {})
            if r["variant"] in items[r["item_id"]]:
                raise ManifestError(f"{path}, line {r['line']}: item {r['item_id']!r} has two "
                                    f"{r['variant']!r} rows")
            items[r["item_id"]][r["variant"]] = r
    for item_id, v in items.items():
        if set(v) != set(VARIANTS):
            raise ManifestError(f"{path}: item {item_id!r} of split {split!r} has variants "
                                f"{sorted(v)}; expected all of {list(VARIANTS)}")
    if not items:
        raise ManifestError(f"{path}: no triplets for split {split!r}")
    return items


def load_foa(path, sample_rate, num_samples):
    """WAV -> float32 [4, num_samples] (zero-padded or cut), checking format."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: audio file named in the manifest does not exist")
    try:
        sr, x = wavfile.read(path)
    except ValueError as e:
        raise ManifestError(f"{path}: not a readable WAV file ({e})") from None
    if sr != sample_rate:
        raise ManifestError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz (data.sample_rate)")
    if x.ndim != 2 or x.shape[1] != 4:
        raise ManifestError(f"{path}: shape {x.shape}; expected [samples, 4] FOA channels "
                            f"(ACN order W, Y, Z, X, SN3D)")
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif x.dtype == np.int32:
        x = x.astype(np.float32) / 2147483648.0
    else:
        x = x.astype(np.float32)
    x = x.T[:, :num_samples]
    return np.pad(x, ((0, 0), (0, num_samples - x.shape[1])))


def _doa_target(row, n_events=2):
    return np.stack([direction_vector(row[f"event{e}_azimuth"], row[f"event{e}_elevation"])
                     for e in range(1, n_events + 1)]).astype(np.float32)  # [n_events, 3]


def clips_key(root, rows, settings):
    """A short hash naming what a derived array is computed from: the clips'
    files (name, size, modification time: a replaced file is a new clip) and
    the settings of the computation."""
    files = []
    for r in rows:
        st = os.stat(os.path.join(root, r["file_name"]))
        files.append((r["file_name"], st.st_size, st.st_mtime_ns))
    return hashlib.md5(json.dumps([settings, files], sort_keys=True).encode()).hexdigest()[:10]


def cached_array(path, compute):
    """np.load(path), or write compute() there first (atomically: another rank
    computing the same array concurrently writes its own temporary file)."""
    if not os.path.exists(path):
        arr = compute()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, lambda f: np.save(f, arr))
    return np.load(path, mmap_mode="r")


def cached_features(root, rows, frontend_cfg, tag, cache_dir=None, batch=32):
    """Front-end features of the rows' WAVs, [N, 7, T, M] float16, cached as
    .npy in cache_dir (default: root)."""
    key = clips_key(root, rows, frontend_cfg)
    path = os.path.join(cache_dir or root, f"features_{tag}_{key}.npy")

    def compute():
        fe = SpatialFrontEnd(**{k: v for k, v in frontend_cfg.items() if k != "clip_seconds"})
        n = int(frontend_cfg["sample_rate"] * frontend_cfg["clip_seconds"])
        out = None
        for i in range(0, len(rows), batch):
            foa = torch.from_numpy(np.stack([load_foa(os.path.join(root, r["file_name"]),
                                                      frontend_cfg["sample_rate"], n)
                                             for r in rows[i:i + batch]]))
            logmel, iv = fe(foa)
            f = torch.cat([logmel, iv], 1).half().numpy()              # [b, 7, T, M]
            if out is None:
                out = np.empty((len(rows),) + f.shape[1:], np.float16)
            out[i:i + len(f)] = f
        return out
    return cached_array(path, compute)


class STClothoDataset(Dataset):
    """Triplets of one split. Item i -> dict with
    feats [3, 7, T, M] (pos, neg_t, neg_s), doa [3, 2, 3] unit vectors, sectors [3, 2],
    captions / plain_captions (3 strings each), caption_ids / plain_ids [3] (equal ids = same text)."""

    def __init__(self, root, split, frontend_cfg, spec_augment=None, seed=0, with_single=False,
                 cache_dir=None):
        rows = read_manifest(root)
        path = os.path.join(root, MANIFEST)
        self.items = list(group_triplets(rows, split, path).values())
        self.split, self.seed, self.epoch = split, seed, 0
        self.spec_augment = spec_augment if split == "train" else None
        flat = [it[v] for it in self.items for v in VARIANTS]
        self.rows = flat                                      # item-major: 3 rows an item
        self.cache_dir = cache_dir or root
        self.feats = cached_features(root, flat, frontend_cfg, split, self.cache_dir)
        self.doa = np.stack([_doa_target(r) for r in flat]).reshape(len(self.items), 3, 2, 3)
        self.sectors = np.array([[sector_of(r["event1_azimuth"]), sector_of(r["event2_azimuth"])]
                                 for r in flat]).reshape(len(self.items), 3, 2)
        self.singles = [r for r in rows if r["split"] == split and r["variant"] == "single"]
        self.single_feats = None
        if with_single and self.singles:
            self.single_feats = cached_features(root, self.singles, frontend_cfg, split + "_single",
                                                self.cache_dir)
            self.single_doa = np.stack([_doa_target(r, 1)[0] for r in self.singles])
            self.single_sector = np.array([sector_of(r["event1_azimuth"]) for r in self.singles])
        self.root = root

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.items)

    def _augment(self, x, rng):
        """SpecAugment: the same time and mel masks on all 7 channels of one clip."""
        _, T, M = x.shape
        for _ in range(self.spec_augment["time_masks"]):
            w = rng.integers(0, self.spec_augment["time_width"] + 1)
            t0 = rng.integers(0, T - w + 1)
            x[:, t0:t0 + w] = 0
        for _ in range(self.spec_augment["freq_masks"]):
            w = rng.integers(0, self.spec_augment["freq_width"] + 1)
            f0 = rng.integers(0, M - w + 1)
            x[:, :, f0:f0 + w] = 0
        return x

    def __getitem__(self, i):
        feats = torch.from_numpy(np.array(self.feats[3 * i:3 * i + 3], dtype=np.float32))
        if self.spec_augment:
            rng = item_rng(self.seed, self.epoch, i)
            feats = torch.stack([self._augment(f, rng) for f in feats])
        it = self.items[i]
        return {"feats": feats, "doa": torch.from_numpy(self.doa[i]),
                "sectors": torch.from_numpy(self.sectors[i]),
                "captions": [it[v]["caption"] for v in VARIANTS],
                "plain_captions": [it[v]["plain_caption"] for v in VARIANTS],
                "index": i}


def _text_id(s):
    return int(hashlib.md5(s.lower().encode()).hexdigest()[:12], 16)


def collate(items):
    """Batch of B triplets; caption lists are flat and item-major (3 * B strings)."""
    caps = [c for it in items for c in it["captions"]]
    plain = [c for it in items for c in it["plain_captions"]]
    return {"feats": torch.stack([it["feats"] for it in items]),       # [B, 3, 7, T, M]
            "doa": torch.stack([it["doa"] for it in items]),           # [B, 3, 2, 3]
            "sectors": torch.stack([it["sectors"] for it in items]),   # [B, 3, 2]
            "caption_ids": torch.tensor([_text_id(c) for c in caps]).view(-1, 3),
            "plain_ids": torch.tensor([_text_id(c) for c in plain]).view(-1, 3),
            "index": torch.tensor([it["index"] for it in items]),
            "captions": caps, "plain_captions": plain}
