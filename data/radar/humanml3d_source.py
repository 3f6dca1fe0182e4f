"""Reading a HumanML3D folder (BRIEF section 2): split lists, caption lines
with their sub-segments, the clips to simulate, and a digest of the files.

``plan_clips(src, p)`` follows HumanML3D's own text-to-motion loader: the
``#0.0#0.0`` lines of ``texts/{id}.txt`` caption the whole motion (clip
``{id}``); a line for seconds start..end captions frames
``int(start*fps):int(end*fps)`` (lines with the same span share one clip,
``{id}_f{a}-{b}``; HumanML3D makes one clip a line); clips shorter than
``min_frames`` or longer than ``max_frames`` are skipped and counted, as are
listed ids without files, files listed nowhere and empty captions. A motion
``M{id}`` (the left/right mirror) goes to the split of ``{id}``. Only the
npy headers are read (shapes checked before any simulation starts).
"""
import hashlib
import json
import os

import numpy as np

from data.cache import UserDataError
from data.radar.smpl import check_joint_shape
from data.radar.text import clean_caption

SPLITS = ("train", "val", "test")
SKIP_REASONS = ("unlisted", "listed_missing", "no_text", "empty_caption", "short", "long", "empty_span",
                "mirror_moved")


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def read_splits(src):
    """{id: split} from train/val/test.txt; an id listed twice is an error."""
    missing = [f"{s}.txt" for s in SPLITS if not os.path.isfile(os.path.join(src, f"{s}.txt"))]
    if missing:
        raise UserDataError(f"{src}: HumanML3D split lists {missing} not found; expected "
                            "train.txt, val.txt and test.txt, one motion id a line")
    where = {}
    for split in SPLITS:
        for cid in _lines(os.path.join(src, f"{split}.txt")):
            if where.get(cid, split) != split:
                raise UserDataError(f"{src}: id {cid!r} is listed in {where[cid]}.txt and {split}.txt; "
                                    "expected each motion in one split")
            where[cid] = split
    return where


def parse_texts(path, fps):
    """texts/{id}.txt -> {(first, end) frames or None for the whole motion: [(caption, tokens)]}."""
    spans = {}
    for n, line in enumerate(_lines(path), 1):
        parts = line.split("#")
        if len(parts) == 1:          # a bare caption: the whole motion
            parts = [parts[0], "", "0.0", "0.0"]
        if len(parts) != 4:
            raise UserDataError(f"{path}:{n}: {len(parts)} '#'-separated fields; expected "
                                "caption#tokens#start#end (HumanML3D texts)")
        try:
            start, end = (float(x) if x.strip().lower() != "nan" else 0.0 for x in parts[2:])
        except ValueError:
            raise UserDataError(f"{path}:{n}: start/end {parts[2]!r}, {parts[3]!r}; expected seconds "
                                "(0.0#0.0 for the whole motion)") from None
        span = None if start == 0.0 and end == 0.0 else (int(start * fps), int(end * fps))
        spans.setdefault(span, []).append((parts[0].strip(), parts[1].strip()))
    return spans


def source_digest(src):
    """Digest of the source's file list (name, size, mtime): a changed source rebuilds."""
    h = hashlib.sha256()
    for sub in ("new_joints", "texts", "meta"):
        d = os.path.join(src, sub)
        if os.path.isdir(d):
            for e in sorted(os.scandir(d), key=lambda e: e.name):
                st = e.stat()
                h.update(f"{sub}/{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for name in [f"{s}.txt" for s in SPLITS] + ["actions.json"]:
        path = os.path.join(src, name)
        if os.path.isfile(path):
            st = os.stat(path)
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def plan_clips(src, p):
    """The clips to simulate, grouped by source motion: (jobs, skipped counts).
    A job is (joints path, [clip dict]); reads only the npy headers."""
    where = read_splits(src)
    joints_dir = os.path.join(src, "new_joints")
    if not os.path.isdir(joints_dir):
        raise UserDataError(f"{src}: no new_joints/ folder; expected new_joints/{{id}}.npy [T, 22, 3] "
                            "(HumanML3D's SMPL-22 joints)")
    present = sorted(f[:-4] for f in os.listdir(joints_dir) if f.endswith(".npy"))
    skipped = {k: 0 for k in SKIP_REASONS}
    skipped["listed_missing"] = len(set(where) - set(present))
    placements = {s: p["placements"] if s == "train" or p["layout"] != "project" else p["eval_placements"]
                  for s in SPLITS}
    jobs = []
    for mid in present:
        base = mid[1:] if mid.startswith("M") and mid[1:] in where else mid
        split = where.get(base)
        if split is None:
            skipped["unlisted"] += 1
            continue
        skipped["mirror_moved"] += int(mid in where and where[mid] != split)
        path = os.path.join(joints_dir, f"{mid}.npy")
        t_len = _num_frames(path)
        txt = os.path.join(src, "texts", f"{mid}.txt")
        if not os.path.isfile(txt):
            skipped["no_text"] += 1
            continue
        meta = _source_meta(src, mid)
        clips = []
        for span, lines in parse_texts(txt, p["fps"]).items():
            a, b = (0, t_len) if span is None else (span[0], min(span[1], t_len))
            if b <= a:
                skipped["empty_span"] += 1
                continue
            if b - a < p["min_frames"]:
                skipped["short"] += 1
                continue
            if p["max_frames"] is not None and b - a > p["max_frames"]:
                skipped["long"] += 1
                continue
            kept = [(c, tok) for c, tok in lines if clean_caption(c)]
            skipped["empty_caption"] += len(lines) - len(kept)
            if not kept:
                continue
            lines, captions = kept, [clean_caption(c) for c, _ in kept]
            name = mid if span is None else f"{mid}_f{a}-{b}"
            carry = meta if span is None and meta.get("captions") == captions else {}
            clips.append({"name": name, "source": mid, "frames": [a, b], "lines": lines,
                          "captions": captions, "split": split, "placements": placements[split],
                          "actions": carry.get("actions", []),
                          "swapped": carry.get("order_swapped_captions", [])})
        if clips:
            jobs.append((path, clips))
    if not jobs:
        raise UserDataError(f"{src}: no clip to simulate (skipped: {skipped}); expected ids listed in "
                            "train/val/test.txt with new_joints/{id}.npy and texts/{id}.txt")
    return jobs, skipped


def _num_frames(path):
    """T of a new_joints file, from its header; the shape is checked here, before any work."""
    try:
        shape = np.load(path, mmap_mode="r").shape
    except (OSError, ValueError) as e:
        raise UserDataError(f"{path}: not a readable .npy file ({e})") from None
    check_joint_shape(shape, path)
    return shape[0]


def _source_meta(src, mid):
    path = os.path.join(src, "meta", f"{mid}.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
