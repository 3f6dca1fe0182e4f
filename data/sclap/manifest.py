"""The project's own layout: <root>/stclotho_manifest.csv, one row per FOA file.

Columns (data/sclap/generate.MANIFEST_COLUMNS): split (train, val or valid,
test), item_id, variant (pos, neg_t, neg_s, or single: a one-event clip for
zero-shot direction), file_name (relative to root), caption, plain_caption,
event{1,2}_{class,azimuth,elevation,onset}; optionally caption_2 ... caption_N
and plain_caption_2 ... (more captions of the same clip: Clotho has 5; a
missing plain_caption_k reuses plain_caption). Event classes and onsets are
optional (real data have none); an event2_onset, when given, places the
window of a long clip (data/sclap/audio_io.py, ``join``). Optional too:
event1_caption, event2_caption (and event{1,2}_caption_k for more): a
single-event caption of the row's first and second event in ITS time order,
the event slots' targets (loss.event_weight > 0 needs them; a row without
them has event_captions None and event_captions_missing saying where).

Rows come back in the form every layout reader returns (data/sclap/layouts.py).
"""
import csv
import os
from collections import OrderedDict

from data.cache import UserDataError
from data.sclap.generate import MANIFEST, MANIFEST_COLUMNS

VARIANTS = ("pos", "neg_t", "neg_s")
OPTIONAL = ("event1_class", "event1_onset", "event2_class", "event2_onset")
REQUIRED = [c for c in MANIFEST_COLUMNS if c not in OPTIONAL]
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


class ManifestError(UserDataError):
    """A manifest row or audio file that does not match the stClotho-style format."""


def _float(row, key, path, line):
    try:
        return float(row[key])
    except (TypeError, ValueError):
        raise ManifestError(f"{path}, line {line}: field {key!r} must be a number "
                            f"(degrees or seconds), got {row[key]!r}") from None


def _event_captions(row, path, line, fields):
    """([event 1's captions], [event 2's]) of a two-event row, or (None, where
    the first missing one should be)."""
    out = []
    for e in (1, 2):
        key = f"event{e}_caption"
        if key not in fields:
            return None, f"{path}: column {key!r} (not in the manifest)"
        first = (row.get(key) or "").strip()
        if not first:
            return None, f"{path}, line {line}: field {key!r} (empty)"
        caps = [first]
        for k in range(2, len(row) + 2):
            extra = (row.get(f"{key}_{k}") or "").strip()
            if not extra:
                break
            caps.append(extra)
        out.append(caps)
    return out, None


def read_manifest(root):
    """All rows of the manifest as dicts, event angles parsed to floats, with
    captions / plain_captions lists and join_s (seconds or None)."""
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: manifest not found (expected an stClotho-style "
                                f"CSV with columns {MANIFEST_COLUMNS})")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}; expected {MANIFEST_COLUMNS} "
                                f"({', '.join(OPTIONAL)} optional)")
        rows = []
        for line, row in enumerate(reader, start=2):
            if row["variant"] not in VARIANTS + ("single",):
                raise ManifestError(f"{path}, line {line}: field 'variant' must be one of "
                                    f"{VARIANTS + ('single',)}, got {row['variant']!r}")
            n_events = 1 if row["variant"] == "single" else 2
            for e in range(1, n_events + 1):
                for k in ("azimuth", "elevation"):
                    row[f"event{e}_{k}"] = _float(row, f"event{e}_{k}", path, line)
            if not row["caption"].strip():
                raise ManifestError(f"{path}, line {line}: field 'caption' is empty")
            row["captions"], row["plain_captions"] = [row["caption"]], [row["plain_caption"] or row["caption"]]
            for k in range(2, len(row) + 1):
                extra = (row.get(f"caption_{k}") or "").strip()
                if not extra:
                    break
                row["captions"].append(extra)
                row["plain_captions"].append((row.get(f"plain_caption_{k}") or "").strip()
                                             or row["plain_captions"][0])
            onset = row.get("event2_onset") or ""
            row["join_s"] = _float(row, "event2_onset", path, line) if onset.strip() else None
            row["event_captions"], row["event_captions_missing"] = (
                (None, None) if n_events == 1 else _event_captions(row, path, line, reader.fieldnames))
            row["line"] = line
            rows.append(row)
    return rows


def group_triplets(rows, split, path="manifest"):
    """{item_id: {variant: row}} for one split, in file order; every item needs all three variants."""
    names = SPLIT_NAMES.get(split, (split,))
    items = OrderedDict()
    for r in rows:
        if r["split"] in names and r["variant"] != "single":
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
        raise ManifestError(f"{path}: no triplets for split {split!r} (field 'split' = "
                            f"{' or '.join(names)})")
    return items


def read_split(root, split):
    """(items [{variant: row}], single-event rows) of one split."""
    rows = read_manifest(root)
    items = list(group_triplets(rows, split, os.path.join(root, MANIFEST)).values())
    names = SPLIT_NAMES.get(split, (split,))
    return items, [r for r in rows if r["split"] in names and r["variant"] == "single"]
