"""TimesCLIP file format, its loader and the two datasets (stage 1 completion,
stage 2 yield).

File format (``<data.root>/fields.csv``, UTF-8 CSV with a header; one row per
field-season; the generator writes it and users' own series use the same):

    field_id,region,year,yield_t_ha,NIR_00,...,NIR_35,RVI_00,...,red_35

- ``field_id`` any string, ``region`` any string, ``year`` an integer (the
  split is by year), ``yield_t_ha`` a float in t/ha (may be empty when only
  stage 1 is trained);
- 7 variates x 36 ten-day composites, band-major, in the order
  NIR, RVI, SWIR1, blue, EVI, NDVI, red; an empty cell is a gap (cloud) and is
  filled by linear interpolation in time; a band with no observation in a row
  is an error.
"""
import csv
import hashlib
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from data.cache import resolve_root
from data.timesclip.generate import BANDS, FIELDS, N_STEPS
from training.data import item_rng

META = ("field_id", "region", "year", "yield_t_ha")


def value_columns(n_steps=N_STEPS):
    return [f"{b}_{t:02d}" for b in BANDS for t in range(n_steps)]


def load_fields(path, n_steps=N_STEPS):
    """Read a fields CSV. Returns dict with ``series`` [N, T, V] float32 (gaps
    filled), ``observed`` [N, T, V] bool, ``yield`` [N] float32 (NaN if
    empty), ``year`` [N] int64, ``region`` and ``field_id`` lists."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: fields file not found (expected the TimesCLIP CSV, "
                                f"see data/timesclip/dataset.py)")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header row {','.join(META)},...")
        want = list(META) + value_columns(n_steps)
        missing = [c for c in want if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                             f"expected {','.join(META)} then <band>_<step> for bands {BANDS} "
                             f"and steps 00..{n_steps - 1:02d}")
        col = {c: i for i, c in enumerate(header)}
        vidx = [col[c] for c in value_columns(n_steps)]
        ids, regions, years, ylds, vals = [], [], [], [], []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{path}, line {line}: {len(row)} fields, expected {len(header)}")
            try:
                years.append(int(row[col["year"]]))
            except ValueError:
                raise ValueError(f"{path}, line {line}, field 'year': expected an integer, "
                                 f"got {row[col['year']]!r}") from None
            ylds.append(_float(row[col["yield_t_ha"]], path, line, "yield_t_ha"))
            vals.append([_float(row[i], path, line, header[i]) for i in vidx])
            ids.append(row[col["field_id"]])
            regions.append(row[col["region"]])
    if not vals:
        raise ValueError(f"{path}: no data rows")
    raw = np.asarray(vals, np.float64).reshape(len(vals), len(BANDS), n_steps).transpose(0, 2, 1)
    observed = ~np.isnan(raw)
    empty = np.argwhere(~observed.any(1))
    if len(empty):
        i, v = empty[0]
        raise ValueError(f"{path}, line {i + 2}, field '{BANDS[v]}_*': no observed value in the "
                         f"whole season; expected at least one")
    return {"series": fill_gaps(raw).astype(np.float32), "observed": observed,
            "yield": np.asarray(ylds, np.float32), "year": np.asarray(years, np.int64),
            "region": regions, "field_id": ids}


def _float(text, path, line, field):
    if text.strip() == "":
        return np.nan
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{path}, line {line}, field {field!r}: expected a number or empty, "
                         f"got {text!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"{path}, line {line}, field {field!r}: expected a finite number, got {text!r}")
    return v


def fill_gaps(raw):
    """Linear interpolation in time of NaN gaps, [N, T, V]; edges hold the
    nearest observation (as a compositing pipeline would)."""
    out = raw.copy()
    t = np.arange(raw.shape[1])
    for i, v in zip(*np.where(np.isnan(raw).any(1))):
        s = raw[i, :, v]
        ok = ~np.isnan(s)
        out[i, :, v] = np.interp(t, t[ok], s[ok])
    return out


def fields_path(data_cfg):
    """``<data.root>/fields.csv``, the root resolved against the current
    directory (generated there, or a user's with ``data.generate false``)."""
    return os.path.join(resolve_root(data_cfg["root"]), FIELDS)


class FieldTable:
    """All rows of one fields file, split by year, with normalisation
    statistics from the training years only."""

    @classmethod
    def from_config(cls, data_cfg):
        d = data_cfg
        return cls(fields_path(d), d["train_years"], d["val_years"], d["test_years"])

    def __init__(self, path, train_years, val_years, test_years):
        self.path = path
        d = load_fields(path)
        self.d = d
        self.splits = {}
        for name, years in (("train", train_years), ("val", val_years), ("test", test_years)):
            idx = np.where(np.isin(d["year"], list(years)))[0]
            if len(idx) == 0:
                raise ValueError(f"{path}: no rows for {name} years {list(years)}; "
                                 f"years present: {sorted(set(d['year'].tolist()))}")
            self.splits[name] = idx
        tr = d["series"][self.splits["train"]]
        self.mean = tr.mean((0, 1)).astype(np.float32)            # [V]
        self.std = (tr.std((0, 1)) + 1e-6).astype(np.float32)     # [V]
        ty = d["yield"][self.splits["train"]]
        self.y_mean = float(np.nanmean(ty)) if np.isfinite(ty).any() else 0.0
        self.y_std = float(np.nanstd(ty) + 1e-6) if np.isfinite(ty).any() else 1.0

    def norm_series(self, split):
        return (self.d["series"][self.splits[split]] - self.mean) / self.std   # [N, T, V]


class CompletionDataset(Dataset):
    """Stage 1: first ``input_len`` composites -> the next ``pred_len``."""

    def __init__(self, table, split, input_len=18, pred_len=18):
        self.table, self.split = table, split
        self.x = torch.from_numpy(table.norm_series(split))           # [N, 36, V]
        if input_len + pred_len > self.x.shape[1]:
            raise ValueError(f"input_len + pred_len = {input_len + pred_len} > {self.x.shape[1]} steps")
        self.input_len, self.pred_len = input_len, pred_len

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        s = self.x[i]
        return {"x": s[: self.input_len], "y": s[self.input_len: self.input_len + self.pred_len],
                "index": i}


class YieldDataset(Dataset):
    """Stage 2: the whole season [36, V] -> standardised yield. Augmentation
    (train only) draws from ``item_rng(seed, epoch, index)``: Gaussian noise,
    time warp, masking, mixup with another training item, variate dropout."""

    def __init__(self, table, split, aug=None, seed=0):
        self.table, self.split = table, split
        self.x = torch.from_numpy(table.norm_series(split))            # [N, 36, V]
        y = table.d["yield"][table.splits[split]]
        if not np.isfinite(y).all():
            raise ValueError(f"{table.path}: empty 'yield_t_ha' in {split} rows; stage 2 needs yields")
        self.y_raw = torch.from_numpy(y)
        self.y = (self.y_raw - table.y_mean) / table.y_std
        self.aug, self.seed, self.epoch = aug or {}, seed, 0
        # Inverse-density weights over yield bins: rare (low/high) yields are
        # drawn as often as common ones by the WeightedRandomSampler.
        hist, edges = np.histogram(y, bins=10)
        b = np.clip(np.digitize(y, edges[1:-1]), 0, 9)
        self.sample_weights = torch.as_tensor(1.0 / hist[b], dtype=torch.double)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x, y = self.x[i], self.y[i]
        if self.aug.get("enabled", False):
            x, y = augment(x, y, self, item_rng(self.seed, self.epoch, i), self.aug)
        return {"x": x, "yield": y, "index": i}


def augment(x, y, ds, rng, a):
    """x [T, V] normalised, y scalar. Returns augmented copies."""
    x = x.clone()
    T, V = x.shape
    if a.get("mixup", 0) and rng.random() < a["mixup"]:
        j = int(rng.integers(len(ds)))
        lam = float(rng.uniform(0.3, 0.7))
        x = lam * x + (1 - lam) * ds.x[j]
        y = lam * y + (1 - lam) * ds.y[j]
    if a.get("time_warp", 0):
        f = float(rng.uniform(1 - a["time_warp"], 1 + a["time_warp"]))
        src = np.clip((np.arange(T) - T / 2) * f + T / 2, 0, T - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, T - 1)
        w = torch.as_tensor(src - lo, dtype=x.dtype)[:, None]
        x = x[lo] * (1 - w) + x[hi] * w
    if a.get("noise", 0):
        x = x + torch.as_tensor(rng.normal(0, a["noise"], (T, V)), dtype=x.dtype)
    if a.get("mask", 0):
        keep = torch.as_tensor(rng.random((T, 1)) >= a["mask"], dtype=x.dtype)
        x = x * keep   # masked composites read as the training mean (0)
    if a.get("variate_dropout", 0):
        keep = torch.as_tensor(rng.random((1, V)) >= a["variate_dropout"], dtype=x.dtype)
        x = x * keep
    return x, y


def series_key(x):
    """A host-side name for a series' content (16-byte digest): the frozen
    chart encoder caches by it, so a cached lookup never reads the batch
    back from the device."""
    return hashlib.blake2b(x.numpy().tobytes(), digest_size=16).digest()


def collate(items):
    """Stack the items; ``key``: each item's ``series_key(x)`` (a list of
    bytes, taken on the host where the items are built)."""
    out = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
    out["key"] = [series_key(it["x"]) for it in items]
    return out
