"""sCLAP dataset: triplets of one split, from any layout data/sclap/layouts.py reads.

The files are read by data/sclap/audio_io.py (FLAC/WAV, resampled to the
model's rate, the long-clip policy) and the front end (log-mels + intensity
vectors) is computed once per split and cached as a float16 .npy (in our
generated folder; under data_cache/ for a user's folder, see families/sclap),
which is what lets two CPU cores train on it. With a pretrained audio tower
(``wave_rate`` set) the W channel's samples are cached beside them (float16,
the same window, read at ``wave_rate``) and handed to the model as ``wave``;
without one nothing of that is read or stored. Every caption of an item is
kept: training draws one per item per epoch (the same index for pos, neg_t
and neg_s), evaluation ranks them all (families/sclap/evaluation.py).
With ``event_captions`` (the event slots, loss.event_weight > 0) an item also
carries, per variant, the single-event captions of its first and second
event (index k too, modulo their count); data without them are refused.
"""
import hashlib
import json
import os
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.cache import UserDataError
from data.sclap.audio_io import AudioFileError, audio_info, files_rate, read_foa
from data.sclap.layouts import read_split
from data.sclap.manifest import VARIANTS
from data.sclap.spatial import direction_vector, sector_of
from models.sclap.frontend import SpatialFrontEnd
from training.data import item_rng
from training.io import atomic_write


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


def audio_settings(root, rows, frontend_cfg, long_clips, resample, what, log=print):
    """(front-end config, extra settings) for these files, from their headers.
    With data.resample false the front end runs at the files' rate. The extra
    settings (resampling, the long-clip policy and where each long clip's
    window sits) name the features only when some file needs them, so data
    already at the model's rate and length keep their cache."""
    paths = [os.path.join(root, r["file_name"]) for r in rows]
    fe, extra = dict(frontend_cfg), {}
    if not resample:
        rate = files_rate(paths)
        if rate != fe["sample_rate"]:
            log(f"sclap: {what}: files at {rate} Hz used as they are (data.resample false): the "
                f"front end runs at {rate} Hz, not data.sample_rate {fe['sample_rate']}")
        fe["sample_rate"] = rate
    infos = [audio_info(p) for p in paths]
    rates = Counter(sr for sr, _, _ in infos if sr != fe["sample_rate"])
    if rates:
        extra["resample"] = True
        log(f"sclap: {what}: {sum(rates.values())} of {len(paths)} files at "
            f"{', '.join(f'{sr} Hz' for sr in sorted(rates))} resampled to {fe['sample_rate']} Hz "
            f"(torchaudio; data.resample false keeps the files' rate)")
    long = [i for i, (sr, frames, _) in enumerate(infos) if frames > round(fe["clip_seconds"] * sr)]
    if long:
        longest = max(infos[i][1] / infos[i][0] for i in long)
        if long_clips == "error":
            i = long[0]
            raise AudioFileError(f"{paths[i]}: {infos[i][1] / infos[i][0]:.2f} s, longer than the "
                                 f"model's window (data.clip_seconds {fe['clip_seconds']:g} s) and "
                                 f"data.long_clips is 'error' ({len(long)} such files); choose join, "
                                 f"stride or truncate")
        extra["long_clips"] = long_clips
        extra["join_s"] = [rows[i]["join_s"] for i in long]
        log(f"sclap: {what}: {len(long)} of {len(paths)} files longer than the "
            f"{fe['clip_seconds']:g} s window (up to {longest:.1f} s): data.long_clips {long_clips}")
    return fe, extra


def frames_of(fe_cfg):
    """Frames the front end gives for one window (torchaudio's centred STFT)."""
    return int(fe_cfg["sample_rate"] * fe_cfg["clip_seconds"]) // fe_cfg["hop_length"] + 1


def cached_features(root, rows, frontend_cfg, tag, cache_dir=None, batch=32, read=None, extra=None):
    """Front-end features of the rows' files, [N, 7, T, M] float16, cached as
    .npy in cache_dir (default: root). ``read(row)`` -> FOA [4, n] (longer
    under data.long_clips stride: its frames are average-pooled to T)."""
    extra = extra or {}
    key = clips_key(root, rows, {**frontend_cfg, **extra})
    path = os.path.join(cache_dir or root, f"features_{tag}_{key}.npy")
    n = int(frontend_cfg["sample_rate"] * frontend_cfg["clip_seconds"])
    read = read or (lambda r: read_foa(os.path.join(root, r["file_name"]), frontend_cfg["sample_rate"],
                                       frontend_cfg["clip_seconds"]))

    def compute():
        fe = SpatialFrontEnd(**{k: v for k, v in frontend_cfg.items() if k != "clip_seconds"})
        T = frames_of(frontend_cfg)
        out = None
        for i in range(0, len(rows), batch):
            clips = [read(r) for r in rows[i:i + batch]]
            if all(c.shape[1] == n for c in clips):
                logmel, iv = fe(torch.from_numpy(np.stack(clips)))
                f = torch.cat([logmel, iv], 1)                            # [b, 7, T, M]
            else:                                                         # stride: whole long clips
                f = torch.cat([_pooled(fe, c, T) for c in clips])
            f = f.half().numpy()
            if out is None:
                out = np.empty((len(rows),) + f.shape[1:], np.float16)
            out[i:i + len(f)] = f
        return out
    return cached_array(path, compute)


def cached_wave(root, rows, rate, clip_seconds, tag, cache_dir, read, extra=None):
    """The W channel of the rows' files at ``rate``, [N, rate * clip_seconds]
    float16, cached as .npy beside the features (keyed by the files, the
    rate, the window and the long-clip settings). ``read(row)`` -> [4, n]."""
    extra = extra or {}
    if extra.get("long_clips") == "stride":
        raise UserDataError(f"data.long_clips stride pools the front end's frames of a whole long "
                            f"file; a pretrained audio tower (model.audio.pretrained) takes a "
                            f"waveform window: use data.long_clips join or truncate ({tag})")
    settings = {"what": "W waveform", "sample_rate": rate, "clip_seconds": clip_seconds, **extra}
    path = os.path.join(cache_dir or root, f"wave_{tag}_{clips_key(root, rows, settings)}.npy")

    def compute():
        out = np.empty((len(rows), int(rate * clip_seconds)), np.float16)
        for i, r in enumerate(rows):
            out[i] = read(r)[0]
        return out
    return cached_array(path, compute)


EVENT_FIELDS = ("manifest: columns event1_caption, event2_caption (event1_caption_2, ... for more); "
                "stClotho: audio_segments[e].metadata.spatialized_caption")


def check_event_captions(rows):
    """Every row has its two events' single-event captions, or a UserDataError
    naming the file and the field (the event slots never run without their targets)."""
    for r in rows:
        if r.get("event_captions") is None:
            where = r.get("event_captions_missing") or f"{r['file_name']}: its event captions"
            raise UserDataError(f"{where}: loss.event_weight > 0 (the event slots' loss) needs a "
                                f"single-event caption of each clip's first and second event in "
                                f"time order ({EVENT_FIELDS}; the generator writes them under "
                                f"data.captions diverse); or set loss.event_weight 0")


def _pooled(fe, clip, T):
    """Features of one clip of any length, frames average-pooled to T. [1, 7, T, M]"""
    logmel, iv = fe(torch.from_numpy(clip)[None])
    f = torch.cat([logmel, iv], 1)                                        # [1, 7, T_long, M]
    if f.shape[2] == T:
        return f
    return F.adaptive_avg_pool1d(f.permute(0, 1, 3, 2).flatten(0, 2)[None], T)[0].view(
        1, 7, f.shape[3], T).permute(0, 1, 3, 2)


class STClothoDataset(Dataset):
    """Triplets of one split. Item i -> dict with
    feats [3, 7, T, M] (pos, neg_t, neg_s), doa [3, 2, 3] unit vectors, sectors [3, 2],
    captions / plain_captions (3 strings each: caption k of every variant; k = 0
    outside training, drawn per item and epoch from item_rng in training);
    with ``wave_rate`` also wave [3, n] (the W channel at that rate, not
    SpecAugment-ed); with ``event_captions`` also event_captions (3 x 2
    strings: each variant's first and second event, caption index k)."""

    def __init__(self, root, split, frontend_cfg, spec_augment=None, seed=0, with_single=False,
                 cache_dir=None, layout="manifest", long_clips="join", resample=True, log=print,
                 wave_rate=None, event_captions=False):
        items, singles = read_split(root, layout, split)
        self.event_captions = event_captions
        if event_captions:
            check_event_captions([it[v] for it in items for v in VARIANTS])
        self.items, self.root, self.layout = items, root, layout
        self.split, self.seed, self.epoch = split, seed, 0
        self.spec_augment = spec_augment if split == "train" else None
        self.long_clips = long_clips
        flat = [it[v] for it in self.items for v in VARIANTS]
        self.rows = flat                                      # item-major: 3 rows an item
        self.cache_dir = cache_dir or root
        fe, self.audio_extra = audio_settings(root, flat, frontend_cfg, long_clips, resample, split, log)
        self.frontend_cfg = fe
        self.sample_rate, self.clip_seconds = fe["sample_rate"], fe["clip_seconds"]
        self.feats = cached_features(root, flat, fe, split, self.cache_dir, read=self.read_clip,
                                     extra=self.audio_extra)
        self.wave_rate, self.wave = wave_rate, None
        if wave_rate:
            self.wave = cached_wave(root, flat, wave_rate, self.clip_seconds, split, self.cache_dir,
                                    self.read_wave, self.audio_extra)
        self.doa = np.stack([_doa_target(r) for r in flat]).reshape(len(self.items), 3, 2, 3)
        self.sectors = np.array([[sector_of(r["event1_azimuth"]), sector_of(r["event2_azimuth"])]
                                 for r in flat]).reshape(len(self.items), 3, 2)
        self.singles = singles
        self.single_feats = self.single_wave = None
        if with_single and self.singles:
            s_fe, s_extra = audio_settings(root, singles, frontend_cfg, long_clips, resample,
                                           split + " single", log)
            self.single_feats = cached_features(root, self.singles, s_fe, split + "_single",
                                                self.cache_dir, read=self.read_clip, extra=s_extra)
            if wave_rate:
                self.single_wave = cached_wave(root, self.singles, wave_rate, self.clip_seconds,
                                               split + "_single", self.cache_dir, self.read_wave,
                                               s_extra)
            self.single_doa = np.stack([_doa_target(r, 1)[0] for r in self.singles])
            self.single_sector = np.array([sector_of(r["event1_azimuth"]) for r in self.singles])

    def read_clip(self, row):
        """The FOA samples the front end sees for this row: [4, n] (or longer, stride)."""
        return read_foa(os.path.join(self.root, row["file_name"]), self.sample_rate, self.clip_seconds,
                        self.long_clips, row.get("join_s"))

    def read_wave(self, row):
        """The same window read at ``wave_rate`` (torchaudio resampling from
        the file's rate, once): [4, wave_rate * clip_seconds]."""
        return read_foa(os.path.join(self.root, row["file_name"]), self.wave_rate, self.clip_seconds,
                        self.long_clips, row.get("join_s"))

    def num_captions(self, i):
        """Captions of item i that every variant has (the triplet uses caption k of each)."""
        return min(len(self.items[i][v]["captions"]) for v in VARIANTS)

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
        rng = item_rng(self.seed, self.epoch, i)
        n_cap = self.num_captions(i)
        # training: one caption an item an epoch, the same index k for all three
        # variants; drawn only when there is a choice, so single-caption data keep
        # their augmentation stream as it was
        k = int(rng.integers(n_cap)) if self.split == "train" and n_cap > 1 else 0
        if self.spec_augment:
            feats = torch.stack([self._augment(f, rng) for f in feats])
        it = self.items[i]
        extra = {}
        if self.wave is not None:
            extra["wave"] = torch.from_numpy(np.array(self.wave[3 * i:3 * i + 3], dtype=np.float32))
        if self.event_captions:
            extra["event_captions"] = [[caps[k % len(caps)] for caps in it[v]["event_captions"]]
                                       for v in VARIANTS]
        return {**extra, "feats": feats, "doa": torch.from_numpy(self.doa[i]),
                "sectors": torch.from_numpy(self.sectors[i]),
                "captions": [it[v]["captions"][k] for v in VARIANTS],
                "plain_captions": [it[v]["plain_captions"][k % len(it[v]["plain_captions"])]
                                   for v in VARIANTS],
                "index": i}


def _text_id(s):
    return int(hashlib.md5(s.lower().encode()).hexdigest()[:12], 16)


def collate(items):
    """Batch of B triplets; caption lists are flat and item-major (3 * B strings)."""
    caps = [c for it in items for c in it["captions"]]
    plain = [c for it in items for c in it["plain_captions"]]
    extra = {"wave": torch.stack([it["wave"] for it in items])} if "wave" in items[0] else {}  # [B, 3, n]
    if "event_captions" in items[0]:
        # flat 6B strings, (item, variant, event) major: event 1 then event 2 of each clip
        events = [c for it in items for two in it["event_captions"] for c in two]
        extra["event_captions"] = events
        extra["event_ids"] = torch.tensor([_text_id(c) for c in events]).view(-1, 3, 2)
    return {**extra, "feats": torch.stack([it["feats"] for it in items]),  # [B, 3, 7, T, M]
            "doa": torch.stack([it["doa"] for it in items]),           # [B, 3, 2, 3]
            "sectors": torch.stack([it["sectors"] for it in items]),   # [B, 3, 2]
            "caption_ids": torch.tensor([_text_id(c) for c in caps]).view(-1, 3),
            "plain_ids": torch.tensor([_text_id(c) for c in plain]).view(-1, 3),
            "index": torch.tensor([it["index"] for it in items]),
            "captions": caps, "plain_captions": plain}
