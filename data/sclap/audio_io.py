"""How an FOA file on disk becomes the samples the front end sees.

Any format soundfile reads (FLAC, WAV, ...), 4 channels (ACN W, Y, Z, X, SN3D).

- Sample rate: a file at another rate than the model's (``data.sample_rate``)
  is resampled with torchaudio (``data.resample: true``, the default); with
  ``data.resample: false`` the front end runs at the files' own rate instead
  (``files_rate``: every file of a split must then share one rate).
- Shorter than the window (``data.clip_seconds``): zero-filled at the end.
- Longer (``data.long_clips``; stClotho joins two 15-30 s Clotho clips, so
  the first seconds hold the first event only):
    join      (default) the window centred on the join of the two events
              (the first segment's duration from the metadata, else the middle
              of the file): half a window of each, in their order;
    stride    the whole file; the front end's frames are then average-pooled
              to the window's frame count (one frame per len / window of the
              clip: coarser in time, nothing dropped; see data/sclap/dataset.py);
    truncate  the first window (the second event may be lost);
    error     stop, naming the file.
"""
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio

from data.cache import UserDataError

LONG_CLIPS = ("join", "stride", "truncate", "error")


class AudioFileError(UserDataError):
    """An audio file that cannot be read as 4-channel FOA."""


def audio_info(path):
    """(sample rate, frames, channels) from the file's header."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: audio file named by the data does not exist")
    try:
        info = sf.info(path)
    except (RuntimeError, sf.LibsndfileError) as e:  # LibsndfileError is a RuntimeError in newer soundfile
        raise AudioFileError(f"{path}: not a readable audio file (soundfile: {e})") from None
    if info.channels != 4:
        raise AudioFileError(f"{path}: {info.channels} channel(s); expected 4 FOA channels "
                             f"(ACN order W, Y, Z, X, SN3D)")
    return info.samplerate, info.frames, info.channels


def files_rate(paths):
    """The one sample rate of these files (for ``data.resample: false``)."""
    rates = {}
    for p in paths:
        rates.setdefault(audio_info(p)[0], p)
    if len(rates) > 1:
        listing = ", ".join(f"{sr} Hz ({p})" for sr, p in sorted(rates.items()))
        raise AudioFileError(f"data.resample is false but the files have several sample rates: "
                             f"{listing}; set data.resample true to resample them to "
                             f"data.sample_rate")
    return next(iter(rates))


def window_start(frames, window, policy, join_s, sr, path):
    """First sample (at the file's rate) of the window read from a long file;
    None: read the whole file (stride)."""
    if policy == "truncate":
        return 0
    if policy == "stride":
        return None
    if policy == "error":
        raise AudioFileError(f"{path}: {frames / sr:.2f} s, longer than the model's window "
                             f"(data.clip_seconds {window / sr:g} s) and data.long_clips is "
                             f"'error'; choose join, stride or truncate")
    if policy != "join":
        raise ValueError(f"data.long_clips must be one of {LONG_CLIPS}, got {policy!r}")
    centre = join_s * sr if join_s is not None and 0 < join_s * sr < frames else frames / 2
    return int(min(max(round(centre - window / 2), 0), frames - window))


def read_foa(path, sample_rate, clip_seconds, long_clips="join", join_s=None):
    """float32 [4, n] at ``sample_rate`` with n = sample_rate * clip_seconds;
    [4, >n] for a long file under ``stride``."""
    sr, frames, _ = audio_info(path)
    window = int(round(clip_seconds * sr))                  # the window at the file's rate
    start, count = 0, frames
    if frames > window:
        start = window_start(frames, window, long_clips, join_s, sr, path)
        start, count = (0, frames) if start is None else (start, window)
    try:
        x, _ = sf.read(path, start=start, frames=count, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise AudioFileError(f"{path}: not a readable audio file (soundfile: {e})") from None
    x = np.ascontiguousarray(x.T)                           # [4, count]
    if sr != sample_rate:
        x = torchaudio.functional.resample(torch.from_numpy(x), sr, sample_rate).numpy()
    n = int(sample_rate * clip_seconds)
    if x.shape[1] > n and not (long_clips == "stride" and frames > window):
        x = x[:, :n]                                        # rounding of the window only
    return np.pad(x, ((0, 0), (0, max(0, n - x.shape[1]))))
