"""Loader for radar + text data in either documented layout (generated or real).

``RadarTextDataset(root, split, ...)`` reads the split lists and clips of
the layout ``root`` holds (data/radar/layouts.py: ``project``, three views
in ``{filefolder}/mmwave/{fileindex}.npz``; ``mmexpert``, Doppler only in
``udoppler/{fileindex}A.npy`` [T, 128] with rotated copies drawn in
training), found by looking unless ``layout`` names it. ``split_files`` /
``split_ratios`` combine several split lists (seed 001's ``train_split`` /
``train_ratio``; subsets drawn from ``data_seed``). When present, the
action sequence in ``{filefolder}/meta/{fileindex}.json`` and the action
list of ``root/data_info.json`` (real data has neither: ``actions`` is then
empty and ``label`` -1). Captions come from ``texts/{fileindex}.txt``
(HumanML3D lines; a ``#start#end`` line is a clip of its own, seconds turned
into frames with ``frame_rate``), else the split file; only the text before
the first ``#`` is used, lower-cased, trailing period stripped, cut to
``max_text_len`` words. Asking for views the layout lacks is an error that
names them and says ``--data.radar_views doppler``.

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
* ``t_range`` ((100, 500): mmExpert keeps 100 <= T < 500; config keys
  ``data.min_frames``, ``data.max_frames``; either bound None: open):
  a file with T outside is an error naming the file and the keys;
  a caption sub-segment outside is skipped and counted (HumanML3D's loader).
* ``filter_invalid`` (False): drop clips with T outside ``t_range`` or
  non-finite values (mmExpert's filter) with a warning; by default such a
  file is an error naming the file, the key and what was expected
  (non-finite values: when the item is loaded).

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
({"key", "kind", "npz" (the file), "rotations", "T", "offset" (of a
sub-segment), "file_T", "captions", "meta", "actions"}), ``dataset.layout``
and ``dataset.source_counts`` (clips kept per split list).
"""
import json
import os
import warnings
import zipfile

import numpy as np
import torch
from torch.utils.data import Dataset

from data.cache import UserDataError
from data.radar.layouts import LAYOUT_VIEWS, find_layout, split_clips, split_sources
from training.data import item_rng

VIEWS = {"range_time": 256, "doppler_time": 128, "azimuth_time": 128}
VIEW_ALIASES = {"range": "range_time", "doppler": "doppler_time", "azimuth": "azimuth_time"}
MMEXPERT_T_RANGE = (100, 500)   # kept when 100 <= T < 500


class RadarDataError(UserDataError):
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


def check_doppler_file(path, array=None):
    """Validate one mmExpert udoppler .npy ([T, 128], time first; array given: also
    finiteness) from its header. Returns T."""
    if not os.path.exists(path):
        raise RadarDataError(f"{path}: file not found (listed in the split file)")
    try:
        shape = np.load(path, mmap_mode="r").shape if array is None else array.shape
    except (OSError, ValueError) as e:
        raise RadarDataError(f"{path}: not a readable .npy file ({e})") from None
    if len(shape) != 2 or shape[1] != VIEWS["doppler_time"]:
        raise RadarDataError(f"{path}: shape {tuple(shape)}; expected [T, 128] Doppler-time, time "
                             "first (mmExpert's udoppler layout)")
    if array is not None and not np.all(np.isfinite(array)):
        raise RadarDataError(f"{path}: non-finite values; expected finite floats")
    return int(shape[0])


def span_text(lo, hi):
    """The T range as text: '100 <= T < 500', 'T >= 40', 'T < 200', 'any T'."""
    return " ".join(p for p in (f"{lo} <=" if lo else "", "T", f"< {hi}" if hi else "") if p) \
        if lo or hi else "any T"


def check_layout_views(root, layout, radar_views):
    """Every view ``radar_views`` asks for is in the layout, else an error naming the missing ones."""
    have = LAYOUT_VIEWS[layout]
    missing = [v for v in parse_views(radar_views) if v not in have]
    if missing:
        raise RadarDataError(
            f"{root}: the {layout} layout holds only {', '.join(have)}; data.radar_views="
            f"{radar_views!r} also asks for {', '.join(missing)}, which are not there. Pass "
            f"--data.radar_views doppler to train on what is there (the model is then built "
            f"for that one view)")


class RadarTextDataset(Dataset):
    def __init__(self, root, split, max_motion_length=496, min_motion_len=96, max_text_len=20,
                 unit_length=16, log_norm=True, radar_views="all", seed=0, train=True,
                 filter_invalid=False, t_range=MMEXPERT_T_RANGE, layout=None, split_files=None,
                 split_ratios=None, data_seed=0, frame_rate=20.0, log=print, memory_cache_mb=1024):
        self.root, self.split = root, split
        # each clip's file, read and normalised once and then kept in memory, up
        # to this many MB (shared out among DataLoader workers); 0 = off
        self.memory_cache_mb = float(memory_cache_mb)
        self._memory, self._memory_bytes = {}, 0
        self.max_motion_length, self.min_motion_len = int(max_motion_length), int(min_motion_len)
        self.max_text_len, self.unit_length = max_text_len, int(unit_length)
        self.log_norm, self.views = log_norm, parse_views(radar_views)
        self.seed, self.train, self.epoch = seed, train, 0
        if self.max_motion_length % self.unit_length:
            raise ValueError(f"max_motion_length={max_motion_length} must be a multiple of "
                             f"unit_length={unit_length}")
        self.layout = layout or find_layout(root).name
        check_layout_views(root, self.layout, radar_views)
        info_path = os.path.join(root, "data_info.json")
        info = {}
        if os.path.exists(info_path):
            with open(info_path) as f:
                info = json.load(f)
        self.action_names = list(info.get("actions", []))
        self.action_prompts = dict(info.get("action_prompts", {}))
        self.sources = split_sources(root, self.layout, split, split_files, split_ratios)
        clips, self.source_counts = split_clips(root, self.layout, self.sources, data_seed, frame_rate,
                                                max_text_len, train, log)
        lo, hi = t_range if t_range else (None, None)
        self.items, short, invalid, seg_out = [], 0, 0, 0
        for clip in clips:
            meta = {}
            if os.path.exists(clip["meta"]):
                with open(clip["meta"]) as f:
                    meta = json.load(f)
            try:
                t = self._num_frames(clip, meta, filter_invalid)
                if t_range and not ((lo is None or lo <= t) and (hi is None or t < hi)):
                    raise RadarDataError(f"{clip['path']}: T={t} frames; expected {span_text(lo, hi)} "
                                         "(data.min_frames, data.max_frames; data.filter_invalid true "
                                         "drops such clips)")
            except RadarDataError:
                if not filter_invalid:
                    raise
                invalid += 1
                continue
            actions = [a["name"] for a in meta.get("actions", [])]
            for span, captions in clip["spans"].items():
                a, b = (0, t) if span is None else (span[0], min(span[1], t))
                if span is not None and (b <= a or (t_range and not (
                        (lo is None or lo <= b - a) and (hi is None or b - a < hi)))):
                    seg_out += 1       # HumanML3D's loader skips such sub-segments too
                    continue
                if b - a < self.min_motion_len:
                    short += 1
                    continue
                if not captions:
                    raise RadarDataError(f"entry {clip['key']!r} of {clip['split_file']}: no captions; "
                                         f"expected 'captions' in the entry or {clip['txt']}")
                if not all(captions):
                    raise RadarDataError(f"entry {clip['key']!r} of {clip['split_file']}: empty caption; "
                                         "expected text before the first '#'")
                self.items.append({
                    "key": clip["key"] if span is None else f"{clip['key']}_f{a}-{b}",
                    "kind": clip["kind"], "npz": clip["path"], "rotations": clip["rotations"],
                    "T": int(b - a), "offset": int(a), "file_T": int(t), "captions": captions,
                    # a sub-segment is not the clip that meta/ (actions, swapped captions) describes
                    "meta": clip["meta"] if span is None else "", "actions": actions if span is None else []})
        where = f"{self.sources[0][0]}" + (f" (+{len(self.sources) - 1} split files)" if len(self.sources) > 1 else "")
        if short:
            warnings.warn(f"{where}: dropped {short} clips shorter than min_motion_len="
                          f"{self.min_motion_len} frames")
        if seg_out:
            warnings.warn(f"{where}: skipped {seg_out} caption sub-segments (#start#end) empty or "
                          f"outside {span_text(lo, hi)} frames")
        if invalid:
            warnings.warn(f"{where}: dropped {invalid} clips without {span_text(lo, hi)} or "
                          "non-finite values (data.filter_invalid)")
        if not self.items:
            raise RadarDataError(f"{where}: no usable clips")

    def _num_frames(self, clip, meta, filter_invalid):
        """T of the clip's file. Generated data records it in meta/ (checked again when the clip
        is loaded); otherwise it comes from the file headers, which also catches missing keys
        and wrong shapes before training starts."""
        path = clip["path"]
        if clip["kind"] == "npy":
            # rotated copies are checked when drawn (their T against this one's)
            t = check_doppler_file(path)
            if filter_invalid:
                check_doppler_file(path, np.load(path))
            return t
        t = meta.get("num_frames")
        if t is None or filter_invalid:
            t = check_radar_file(path, self.views)
        elif not os.path.exists(path):
            raise RadarDataError(f"{path}: file not found (listed in the split file)")
        if filter_invalid:
            with np.load(path) as z:
                check_radar_file(path, self.views, {k: z[k] for k in self.views})
        return t

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.items)

    def clip_meta(self, index):
        """The clip's meta/{id}.json (actions with times, order-swapped captions) or {}."""
        path = self.items[index]["meta"]
        if not path or not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def _load(self, item, path):
        """{view: float32 [bins, file T]} of the clip's file."""
        if item["kind"] == "npy":
            arr = np.load(path)
            t = check_doppler_file(path, arr)
            arrays = {"doppler_time": np.ascontiguousarray(arr.T, dtype=np.float32)}   # [128, T]
        else:
            try:
                with np.load(path) as z:
                    arrays = {k: z[k].astype(np.float32) for k in self.views if k in z.files}
            except (OSError, ValueError) as e:
                raise RadarDataError(f"{path}: not a readable .npz file ({e})") from None
            t = check_radar_file(path, self.views, arrays)
        if t != item["file_T"]:
            was = (f"{item['npz']} has T={item['file_T']}" if path != item["npz"] else
                   f"its meta/ file says num_frames={item['file_T']}")
            raise RadarDataError(f"{path}: {t} frames but {was}; expected them to agree "
                                 "(regenerate the data)")
        return arrays

    def _normalised(self, item, path):
        """``_load``'s arrays, log(1 + |x|)-normalised with log_norm (elementwise:
        the same numbers as normalising the crop), from memory when read before."""
        arrays = self._memory.get(path)
        if arrays is not None:
            return arrays
        arrays = self._load(item, path)
        if self.log_norm:
            arrays = {k: np.log1p(np.abs(v)) for k, v in arrays.items()}
        size = sum(a.nbytes for a in arrays.values())
        worker = torch.utils.data.get_worker_info()   # each worker holds its own copy
        budget = self.memory_cache_mb * 2**20 / (worker.num_workers if worker else 1)
        if self._memory_bytes + size <= budget:      # filled once; never evicts
            self._memory[path] = arrays
            self._memory_bytes += size
        return arrays

    def __getitem__(self, index):
        item = self.items[index]
        t_len, big = item["T"], self.max_motion_length
        rng = item_rng(self.seed, self.epoch, index) if self.train else None
        path = item["npz"]
        if self.train and item["rotations"]:
            # mmExpert's augmentation: one of the eight radar placements, drawn per epoch
            # (its own stream: the crop and caption draws stay as without rotations)
            path = item["rotations"][int(item_rng(self.seed + 11, self.epoch, index).integers(
                len(item["rotations"])))]
        arrays = self._normalised(item, path)
        if self.train:
            length = max(min(t_len, big) // self.unit_length * self.unit_length, self.unit_length)
            length = min(length, t_len)
            offset = int(rng.integers(0, t_len - length + 1))    # ONE offset for every view
            caption = item["captions"][int(rng.integers(len(item["captions"])))]
        else:
            length, offset, caption = min(t_len, big), 0, item["captions"][0]
        offset += item["offset"]                                  # a caption's sub-segment
        out = {}
        for key in self.views:
            x = arrays[key][:, offset:offset + length]
            if not self.log_norm:   # min-max of the crop (log_norm: done on the whole file)
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
