"""TimesCLIP datasets: a table of field-seasons split by year (``FieldTable``)
and the two stages' datasets over it (stage 1 completion, stage 2 yield).

The table comes from ``data.root`` in any layout of data/timesclip/formats.py
(the project's ``fields.csv``, generated or a user's, or the crop-yield port's
per-year ``extract{YEAR}_*.csv``), the bands ``data.bands`` chosen by name;
the split is by year (``data.train_years`` / ``val_years`` / ``test_years``)
whatever the layout.
"""
import hashlib

import numpy as np
import torch
from torch.utils.data import Dataset

from data.cache import UserDataError
from data.timesclip.formats import find_layout, load
from training.data import item_rng


class FieldTable:
    """All field-seasons of a data folder, split by year, with normalisation
    statistics from the training years only. ``d``: the loaded table
    (data/timesclip/formats.load); ``source``: where it came from."""

    @classmethod
    def from_config(cls, data_cfg):
        d = data_cfg
        root, layout = find_layout(d)
        return cls(load(root, layout, d["bands"]), d["train_years"], d["val_years"],
                   d["test_years"], f"{root} ({layout.name} layout)")

    def __init__(self, d, train_years, val_years, test_years, source="table"):
        self.path = self.source = source
        self.d = d
        self.bands = d["bands"]
        self.splits = {}
        for name, years in (("train", train_years), ("val", val_years), ("test", test_years)):
            idx = np.where(np.isin(d["year"], list(years)))[0]
            if len(idx) == 0:
                raise UserDataError(f"{source}: no rows for {name} years {list(years)}; "
                                    f"years present: {sorted(set(d['year'].tolist()))}")
            self.splits[name] = idx
        tr = d["series"][self.splits["train"]]
        self.mean = tr.mean((0, 1)).astype(np.float32)            # [V]
        self.std = (tr.std((0, 1)) + 1e-6).astype(np.float32)     # [V]
        ty = d["yield"][self.splits["train"]]
        self.y_mean = float(np.nanmean(ty)) if np.isfinite(ty).any() else 0.0
        self.y_std = float(np.nanstd(ty) + 1e-6) if np.isfinite(ty).any() else 1.0

    def summary(self):
        """One line for the log: rows per split and year, and the gap share."""
        years = self.d["year"]
        parts = []
        for name, idx in self.splits.items():
            per = ", ".join(f"{y}: {n}" for y, n in zip(*np.unique(years[idx], return_counts=True)))
            parts.append(f"{name} {len(idx)} ({per})")
        gaps = 100 * (1 - self.d["observed"].mean())
        return (f"TimesCLIP table: {len(years)} field-seasons; {'; '.join(parts)}; "
                f"{gaps:.1f}% of cells were gaps (filled in time)")

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
            bad = table.splits[split][~np.isfinite(y)]
            raise UserDataError(f"{table.d['where'][bad[0]]}: empty yield ({len(bad)} of the {split} "
                                f"rows); stage 2 needs a yield in every row")
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
