"""The on-disk radar layouts a user's folder may hold, found by looking, and
their split lists read into one list of clips.

Two layouts (BRIEF section 2), each with ``_split/{train,val,test}.json`` =
``{key: {"filefolder", "fileindex", "captions"}}``:

* ``project`` -- the project's three-view format (what data/radar/sim.py and
  data/radar/humanml3d.py write): ``{filefolder}/mmwave/{fileindex}.npz``
  with range_time [256, T], doppler_time [128, T], azimuth_time [128, T];
  ``{filefolder}/texts/``, ``meta/`` beside it.
* ``mmexpert`` -- the public mmExpert repository's: Doppler only,
  ``udoppler/{fileindex}A.npy`` [T, 128] (time first), rotated copies
  ``udoppler_rotation/{fileindex}{A..H}.npy`` (eight radar placements; used as
  augmentation in training only), ``texts/{fileindex}.txt``. data.root is
  either that ``dataset/HumanML3D`` folder or the mmExpert repository root
  holding it.

``filefolder`` is relative to the folder the writer ran in: "." for ours,
``dataset/HumanML3D/udoppler`` (the mmExpert repository root) for mmExpert's.
``resolve_under`` joins it to data.root, dropping leading components until
the folder exists, so both roots work; ``split_clips`` reports how it
resolved each one.

Split lists (seed 001 sec. 4.1): ``train_split: [a.json, b.json]`` with
``train_ratio: [1.0, 0.5]`` combines several lists; ratio r keeps
``int(len(list) * r)`` entries of that list (mmExpert's ``data_scale``),
drawn without replacement from ``np.random.default_rng([data seed, list
index])`` and kept in file order, so the subset is the same in every run.

Captions: ``texts/{fileindex}.txt`` when it exists (HumanML3D lines
``caption#tokens#start#end``), else the split entry's ``captions``. As
HumanML3D's loader does, ``#0.0#0.0`` lines caption the whole clip and a
line for seconds start..end captions frames ``int(start * frame_rate):
int(end * frame_rate)`` of it: a clip of its own (key ``{key}_f{a}-{b}``).
"""
import json
import os

import numpy as np

from data.cache import UserDataError
from data.layout import Layout, detect_layout, exists
from data.radar.humanml3d_source import parse_texts
from data.radar.text import clean_caption

ROTATIONS = "ABCDEFGH"
MMEXPERT_DIRS = ("", os.path.join("dataset", "HumanML3D"))   # data.root itself, or the repo root
LAYOUT_VIEWS = {"project": ("range_time", "doppler_time", "azimuth_time"),
                "mmexpert": ("doppler_time",)}


def mmexpert_dir(root):
    """The folder holding udoppler/ (data.root or data.root/dataset/HumanML3D), or None."""
    for sub in MMEXPERT_DIRS:
        if os.path.isdir(os.path.join(root, sub, "udoppler")):
            return os.path.join(root, sub) if sub else root
    return None


LAYOUTS = [
    Layout("project", lambda r: exists("mmwave")(r) or exists("*", "mmwave")(r),
           "mmwave/{id}.npz (range_time [256, T], doppler_time [128, T], azimuth_time [128, T]) "
           "and _split/{train,val,test}.json (the project's three-view format)"),
    Layout("mmexpert", lambda r: mmexpert_dir(r) is not None,
           "udoppler/{id}A.npy [T, 128] (Doppler only; udoppler_rotation/ optional) and "
           "_split/{train,val,test}.json, in data.root or data.root/dataset/HumanML3D "
           "(the public mmExpert layout)"),
]


def find_layout(root, forced=None):
    return detect_layout(root, LAYOUTS, forced, what="radar")


def data_dir(root, layout):
    """The folder whose _split/ holds the default split files."""
    return mmexpert_dir(root) if layout == "mmexpert" else root


def resolve_under(root, rel):
    """``rel`` (a path written relative to some other folder) under ``root``:
    absolute paths as they are; else root/rel, root/rel minus its first
    component, ... -- the first that exists; None if none does."""
    if os.path.isabs(rel):
        return rel if os.path.exists(rel) else None
    parts = [p for p in os.path.normpath(rel).split(os.sep) if p not in ("", ".")]
    if not parts:
        return root if os.path.exists(root) else None
    for k in range(len(parts)):          # at least the last component kept
        path = os.path.join(root, *parts[k:])
        if os.path.exists(path):
            return os.path.normpath(path)
    return None


def split_sources(root, layout, split, files=None, ratios=None):
    """[(split file path, ratio)]: the given list (paths relative to data.root
    or absolute) or the layout's ``_split/{split}.json``."""
    if files in (None, "", []):
        return [(os.path.join(data_dir(root, layout), "_split", f"{split}.json"), 1.0)]
    files = [files] if isinstance(files, str) else list(files)
    ratios = [1.0] * len(files) if ratios in (None, []) else (
        [ratios] if isinstance(ratios, (int, float)) else list(ratios))
    if len(ratios) != len(files):
        raise UserDataError(f"data.{split}_split has {len(files)} files but data.{split}_ratio "
                            f"{len(ratios)} ratios; expected one ratio per split file")
    out = []
    for f, r in zip(files, ratios):
        if not 0.0 < float(r) <= 1.0:
            raise UserDataError(f"data.{split}_ratio: {r} for {f}; expected 0 < ratio <= 1 (the "
                                "share of that list's entries used)")
        path = resolve_under(root, f)
        if path is None:
            raise FileNotFoundError(f"{f}: split file (data.{split}_split) not found under "
                                    f"{root}; expected a path relative to data.root or absolute")
        out.append((path, float(r)))
    return out


def read_split(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: split file not found; expected _split/{os.path.basename(path)} "
                                "under data.root (generate the data or point data.root at radar data)")
    with open(path) as f:
        entries = json.load(f)
    if not isinstance(entries, dict):
        raise UserDataError(f"{path}: expected a JSON object {{key: {{\"filefolder\", \"fileindex\", "
                            "\"captions\"}}}")
    for key, e in entries.items():
        for field in ("filefolder", "fileindex"):
            if not isinstance(e, dict) or field not in e:
                raise UserDataError(f"{path}: entry {key!r} lacks {field!r}; expected "
                                    '{"filefolder", "fileindex", "captions"}')
    return entries


def subset(entries, ratio, seed, index):
    """int(n * ratio) of the entries, the same ones for the same (seed, index), in file order."""
    keys = list(entries)
    n = int(len(keys) * ratio)
    if n == len(keys):
        return entries
    keep = sorted(np.random.default_rng([int(seed), int(index)]).permutation(len(keys))[:n])
    return {keys[i]: entries[keys[i]] for i in keep}


def clip_captions(txt, split_captions, frame_rate, max_words):
    """{None or (a, b) frames: [captions]} from texts/ (HumanML3D lines) if it
    exists, else the split entry's captions (the whole clip)."""
    if txt is not None and os.path.isfile(txt):
        spans = parse_texts(txt, frame_rate)
        return {span: [clean_caption(c, max_words) for c, _ in lines]
                for span, lines in spans.items()}
    return {None: [clean_caption(c, max_words) for c in split_captions or []]}


def split_clips(root, layout, sources, seed=0, frame_rate=20.0, max_words=None, train=False,
                log=print):
    """Every clip of the split lists: [{"key", "kind" ("npz" | "npy"), "path",
    "rotations" ([paths]: mmexpert, train), "folder", "spans" ({None or (a, b):
    captions}), "txt", "meta"}], and the counts kept per source."""
    clips, counts, told = [], [], set()
    for index, (path, ratio) in enumerate(sources):
        entries = subset(read_split(path), ratio, seed, index)
        counts.append(len(entries))
        for key, e in entries.items():
            folder = resolve_under(root, e["filefolder"])
            if folder is None:
                raise UserDataError(
                    f"{path}: entry {key!r}: filefolder {e['filefolder']!r} not found under {root} "
                    "(tried it and its trailing parts); expected the folder holding the clip, relative "
                    "to data.root (mmExpert writes it relative to its repository root)")
            if (e["filefolder"], folder) not in told and os.path.normpath(
                    os.path.join(root, e["filefolder"])) != folder:
                told.add((e["filefolder"], folder))
                log(f"radar data: filefolder {e['filefolder']!r} of the split files is relative to "
                    f"the mmExpert repository root; resolved against data.root as {folder}")
            idx = str(e["fileindex"])
            if layout == "project":
                clip = {"kind": "npz", "path": os.path.join(folder, "mmwave", f"{idx}.npz"),
                        "rotations": [], "txt": os.path.join(folder, "texts", f"{idx}.txt"),
                        "meta": os.path.join(folder, "meta", f"{idx}.json")}
            else:   # folder is .../udoppler; texts/ beside it
                npy = os.path.join(folder, f"{idx}A.npy")
                if not os.path.exists(npy) and os.path.exists(os.path.join(folder, f"{idx}.npy")):
                    npy = os.path.join(folder, f"{idx}.npy")     # mmExpert's fallback
                rot = folder.rstrip(os.sep) + "_rotation"
                rotations = [p for p in (os.path.join(rot, f"{idx}{r}.npy") for r in ROTATIONS)
                             if os.path.exists(p)] if train else []
                parent = os.path.dirname(folder.rstrip(os.sep))
                clip = {"kind": "npy", "path": npy, "rotations": rotations,
                        "txt": os.path.join(parent, "texts", f"{idx}.txt"),
                        "meta": os.path.join(parent, "meta", f"{idx}.json")}
            clip.update(key=str(key), split_file=path,
                        spans=clip_captions(clip["txt"], e.get("captions"), frame_rate, max_words))
            clips.append(clip)
    return clips, counts
