"""Loader for mmExpert-format radar + text data (generated or real).

``RadarTextDataset(root, split, ...)`` reads ``root/_split/{split}.json``
({key: {"filefolder", "fileindex", "captions"}}), the maps in
``root/{filefolder}/mmwave/{fileindex}.npz`` and, when present, the action
sequence in ``root/{filefolder}/meta/{fileindex}.json`` and the action list
of ``root/data_info.json`` (real mmExpert data has neither: ``actions`` is
then empty and ``label`` -1). Captions come from the split file, else from
``texts/{fileindex}.txt``; only the text before the first ``#`` is used,
lower-cased, trailing period stripped, cut to ``max_text_len`` words.

Options follow seed 001 (sections 4.1, 5.5):

* ``max_motion_length`` (496): frames after cropping; items are zero-padded
  to it, ``radar_mask`` [L] is True on real frames.
* ``min_motion_len`` (96): shorter clips are dropped, with the count in a
  warning.
* ``unit_length`` (16): training crops have a length that is a multiple of it.
* ``log_norm`` (True): ``log(1 + |x|)``; False: min-max to [0, 1] per view
  and clip.
* ``radar_views``: "all", "range", "doppler", "azimuth" (or a comma list);
  unselected views are absent from the item.
* ``train=True``: a random crop (one offset shared by all views -- mmExpert
  drew one per view, which misaligned them in time) and a random caption per
  item, both from ``training.data.item_rng(seed, epoch, index)``; call
  ``set_epoch``. ``train=False``: the whole clip from frame 0 (up to
  max_motion_length) and the first caption.
* ``filter_invalid`` (False): drop clips with T outside ``t_range``
  (default [100, 500)) or non-finite values (mmExpert's filter) with a
  warning; by default such a file is an error naming the file, the key and
  what was expected (non-finite values: when the item is loaded).

Start-up: for real data the npz headers are read (T, keys, shapes) when the
dataset is built, so a bad file fails before training; generated data
records T in ``meta/{id}.json`` (~20x faster start), and every clip is
checked again, keys, shapes, T and finiteness, when it is loaded.

Item: ``range_time`` [256, L], ``doppler_time`` [128, L], ``azimuth_time``
[128, L] float32, ``radar_mask`` [L] bool, ``caption`` str, ``captions``
list[str], ``clip_id`` str, ``actions`` list[str], ``label`` int (index of
the first action in ``dataset.action_names``), ``num_actions`` int.
``collate_radar`` stacks tensors and keeps lists (the family's collate).

Also: ``dataset.action_names`` and ``dataset.action_prompts`` (from
data_info.json; empty for real data), ``dataset.clip_meta(i)`` (the clip's
meta dict: actions with times, order-swapped captions), ``dataset.items[i]``
({"key", "npz", "T", "captions", "meta", "actions"}).
"""
import json
import os
import warnings
import zipfile

import numpy as np
import torch
from torch.utils.data import Dataset

from data.radar.text import clean_caption
from training.data import item_rng

VIEWS = {"range_time": 256, "doppler_time": 128, "azimuth_time": 128}
VIEW_ALIASES = {"range": "range_time", "doppler": "doppler_time", "azimuth": "azimuth_time"}
MMEXPERT_T_RANGE = (100, 500)   # kept when 100 <= T < 500


class RadarDataError(ValueError):
    """A radar file or split that does not match the mmExpert format."""


def parse_views(radar_views):
    if radar_views == "all":
        return list(VIEWS)
    names = radar_views.split(",") if isinstance(radar_views, str) else list(radar_views)
    out = []
    for n in names:
        key = VIEW_ALIASES.get(n.strip(), n.strip())
        if key not in VIEWS:
            raise ValueError(f"radar_views: unknown view {n!r}; expected 'all' or some of "
                             f"{sorted(VIEW_ALIASES)}")
        out.append(key)
    return out


def _npz_shapes(path, keys):
    """({key: shape} for the `keys` the npz holds, read from the array headers
    only; all key names in the file)."""
    shapes = {}
    with zipfile.ZipFile(path) as z:
        names = sorted(n[:-4] for n in z.namelist())
        for key in keys:
            if key not in names:
                continue
            with z.open(f"{key}.npy") as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shapes[key] = read(f)[0]
    return shapes, names


def check_radar_file(path, views=tuple(VIEWS), arrays=None):
    """Validate one npz (keys, shapes, equal T); arrays given: also finiteness. Returns T."""
    if not os.path.exists(path):
        raise RadarDataError(f"{path}: file not found (listed in the split file)")
    try:
        if arrays is None:
            info, present = _npz_shapes(path, views)
        else:
            info, present = {k: v.shape for k, v in arrays.items()}, sorted(arrays)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise RadarDataError(f"{path}: not a readable .npz file ({e})") from None
    t = None
    for key in views:
        if key not in info:
            raise RadarDataError(f"{path}: missing key {key!r}; expected {key} of shape "
                                 f"({VIEWS[key]}, T) (has {present})")
        shape = tuple(info[key])
        if len(shape) != 2 or shape[0] != VIEWS[key]:
            raise RadarDataError(f"{path}: key {key!r} has shape {shape}; expected ({VIEWS[key]}, T)")
        if t is not None and shape[1] != t:
            raise RadarDataError(f"{path}: key {key!r} has T={shape[1]} but {views[0]} has T={t}; "
                                 "expected the same number of frames in every view")
        t = shape[1]
        if arrays is not None and not np.all(np.isfinite(arrays[key])):
            raise RadarDataError(f"{path}: key {key!r} has non-finite values; expected finite floats")
    return t


class RadarTextDataset(Dataset):
    def __init__(self, root, split, max_motion_length=496, min_motion_len=96, max_text_len=20,
                 unit_length=16, log_norm=True, radar_views="all", seed=0, train=True,
                 filter_invalid=False, t_range=MMEXPERT_T_RANGE):
        self.root, self.split = root, split
        self.max_motion_length, self.min_motion_len = int(max_motion_length), int(min_motion_len)
        self.max_text_len, self.unit_length = max_text_len, int(unit_length)
        self.log_norm, self.views = log_norm, parse_views(radar_views)
        self.seed, self.train, self.epoch = seed, train, 0
        if self.max_motion_length % self.unit_length:
            raise ValueError(f"max_motion_length={max_motion_length} must be a multiple of "
                             f"unit_length={unit_length}")
        split_path = os.path.join(root, "_split", f"{split}.json")
        if not os.path.exists(split_path):
            raise FileNotFoundError(f"{split_path}: split file not found; expected _split/{split}.json "
                                    "under data.root (generate the data or point data.root at mmExpert data)")
        with open(split_path) as f:
            entries = json.load(f)
        info_path = os.path.join(root, "data_info.json")
        info = {}
        if os.path.exists(info_path):
            with open(info_path) as f:
                info = json.load(f)
        self.action_names = list(info.get("actions", []))
        self.action_prompts = dict(info.get("action_prompts", {}))

        self.items, short, invalid = [], 0, 0
        for key, e in entries.items():
            for field in ("filefolder", "fileindex"):
                if field not in e:
                    raise RadarDataError(f"{split_path}: entry {key!r} lacks {field!r}; expected "
                                         '{"filefolder", "fileindex", "captions"}')
            folder = os.path.join(root, e["filefolder"])
            npz = os.path.join(folder, "mmwave", f"{e['fileindex']}.npz")
            meta_path = os.path.join(folder, "meta", f"{e['fileindex']}.json")
            meta = {}
            if os.path.exists(meta_path):
                with open(meta_path) as f:
                    meta = json.load(f)
            try:
                # Generated data records T in meta/ (checked again when the clip is
                # loaded); otherwise read it from the npz headers, which also
                # catches missing keys and wrong shapes before training starts.
                t = meta.get("num_frames")
                if t is None or filter_invalid:
                    t = check_radar_file(npz, self.views)
                elif not os.path.exists(npz):
                    raise RadarDataError(f"{npz}: file not found (listed in the split file)")
                if t_range and not (t_range[0] <= t < t_range[1]):
                    raise RadarDataError(f"{npz}: T={t} frames; expected {t_range[0]} <= T < {t_range[1]} "
                                         "(filter_invalid=True drops such clips, t_range=None allows any T)")
                if filter_invalid:
                    with np.load(npz) as z:
                        check_radar_file(npz, self.views, {k: z[k] for k in self.views})
            except RadarDataError:
                if not filter_invalid:
                    raise
                invalid += 1
                continue
            if t < self.min_motion_len:
                short += 1
                continue
            captions = self._captions(key, e, folder)
            actions = [a["name"] for a in meta.get("actions", [])]
            self.items.append({"key": str(key), "npz": npz, "T": int(t), "captions": captions,
                               "meta": meta_path, "actions": actions})
        if short:
            warnings.warn(f"{split_path}: dropped {short} clips shorter than min_motion_len="
                          f"{self.min_motion_len} frames")
        if invalid:
            warnings.warn(f"{split_path}: dropped {invalid} clips with T outside [100, 500) or "
                          "non-finite values (filter_invalid=True)")
        if not self.items:
            raise RadarDataError(f"{split_path}: no usable clips")

    def _captions(self, key, entry, folder):
        raw = entry.get("captions") or []
        if not raw:
            txt = os.path.join(folder, "texts", f"{entry['fileindex']}.txt")
            if not os.path.exists(txt):
                raise RadarDataError(f"entry {key!r}: no 'captions' in the split file and {txt} not found")
            raw = [line for line in open(txt).read().splitlines() if line.strip()]
        caps = [clean_caption(c, self.max_text_len) for c in raw]
        if not all(caps):
            raise RadarDataError(f"entry {key!r}: empty caption; expected text before the first '#'")
        return caps

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.items)

    def clip_meta(self, index):
        """The clip's meta/{id}.json (actions with times, order-swapped captions) or {}."""
        path = self.items[index]["meta"]
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def _load(self, item):
        try:
            with np.load(item["npz"]) as z:
                arrays = {k: z[k].astype(np.float32) for k in self.views if k in z.files}
        except (OSError, ValueError) as e:
            raise RadarDataError(f"{item['npz']}: not a readable .npz file ({e})") from None
        t = check_radar_file(item["npz"], self.views, arrays)
        if t != item["T"]:
            raise RadarDataError(f"{item['npz']}: {t} frames but its meta/ file says num_frames="
                                 f"{item['T']}; expected them to agree (regenerate the data)")
        return arrays

    def __getitem__(self, index):
        item = self.items[index]
        arrays = self._load(item)
        t_len, big = item["T"], self.max_motion_length
        if self.train:
            rng = item_rng(self.seed, self.epoch, index)
            length = max(min(t_len, big) // self.unit_length * self.unit_length, self.unit_length)
            length = min(length, t_len)
            offset = int(rng.integers(0, t_len - length + 1))    # ONE offset for every view
            caption = item["captions"][int(rng.integers(len(item["captions"])))]
        else:
            length, offset, caption = min(t_len, big), 0, item["captions"][0]
        out = {}
        for key in self.views:
            x = arrays[key][:, offset:offset + length]
            if self.log_norm:
                x = np.log1p(np.abs(x))
            else:
                lo, hi = x.min(), x.max()
                x = (x - lo) / max(hi - lo, 1e-8)
            padded = np.zeros((x.shape[0], big), dtype=np.float32)
            padded[:, :length] = x
            out[key] = torch.from_numpy(padded)
        mask = torch.zeros(big, dtype=torch.bool)
        mask[:length] = True
        actions = item["actions"]
        label = self.action_names.index(actions[0]) if actions and actions[0] in self.action_names else -1
        out.update(radar_mask=mask, caption=caption, captions=list(item["captions"]), clip_id=item["key"],
                   actions=list(actions), label=label, num_actions=len(actions))
        return out


def collate_radar(items):
    """List of items -> batch: tensors stacked [B, ...], bools as BoolTensor [B]
    (``has_swap``, data/radar/temporal.py), ints as LongTensor [B], the rest
    as lists."""
    batch = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if torch.is_tensor(vals[0]):
            batch[key] = torch.stack(vals)
        elif isinstance(vals[0], bool):  # before int: bool is an int subclass
            batch[key] = torch.tensor(vals, dtype=torch.bool)
        elif isinstance(vals[0], int):
            batch[key] = torch.tensor(vals, dtype=torch.long)
        else:
            batch[key] = vals
    return batch
