"""sCLAP's audio branches on a pretrained tower (``model.audio.pretrained``).

Semantic branch: the checkpoint's audio tower (LAION-CLAP's HTS-AT or AST,
models/towers/audio.py) on the W waveform, with the checkpoint's own front
end: its sample rate (the W channel resampled with torchaudio from
data.sample_rate) and its mel settings (its feature extractor's config).

Spatial branch (``spatial_from_pretrained``, T-SALM's two-branch set-up):
the same weights with the patch embedding widened from 1 to 7 input
channels, on sCLAP's own 7-channel features (4 log-mels + 3 intensity
vectors) resized to the grid the tower takes (its mel-bin count; AST also
its frame count). Otherwise the from-scratch conv branch.

Both give the maps the temporal encoder and the DOA head read as
[N, C, T', M'] (M' = 1 for a tower: its frame features are band-averaged).
"""
import copy
import math

import torch.nn.functional as F

from models.sclap.audio import ConvBranch
from models.towers import AudioTower
from models.towers.loading import read_preprocessor_config, resolve_pretrained

KEY = "model.audio"


def build_audio_branches(audio, channels, freq_patch, sample_rate):
    """(sed branch, doa branch) for the model.audio section; None when no
    pretrained tower is asked for (the caller builds the conv branches)."""
    audio = dict(audio or {})
    spatial = audio.pop("spatial_from_pretrained", True)
    if not isinstance(spatial, bool):
        raise ValueError(f"{KEY}.spatial_from_pretrained: expected true or false, got {spatial!r}")
    if not audio.get("pretrained"):
        return None
    sed = AudioTower(audio, KEY, sample_rate=sample_rate)
    if not spatial:
        return sed, ConvBranch(7, channels, freq_patch)
    # The same weights again (copied, not read twice from disk), widened to 7 channels.
    path = resolve_pretrained(audio["pretrained"], KEY + ".pretrained")
    doa = AudioTower(audio, KEY, backbone=copy.deepcopy(sed.backbone),
                     preprocess=read_preprocessor_config(path), in_channels=7)
    return sed, doa


def branch_width(branch):
    return branch.hidden_size if isinstance(branch, AudioTower) else branch.out_channels


def tower_grid(tower, frames):
    """(frames, mel bins) the tower takes for features of ``frames`` frames:
    HTS-AT normalises each of its num_mel_bins bands (batch norm) and
    stretches time itself up to spec_size * freq_ratio frames; AST's position
    embeddings fix both axes (max_length x num_mel_bins)."""
    cfg = tower.backbone.config
    if tower.is_clap:
        enc = tower.backbone.audio_encoder
        return min(frames, int(enc.spec_size * enc.freq_ratio)), cfg.num_mel_bins
    return cfg.max_length, cfg.num_mel_bins


def spatial_input(tower, feats):
    """sCLAP features [N, 7, T, M] -> the tower's input [N, 7, F, T'] on its
    grid (bilinear, channel by channel: a replicated input stays replicated)."""
    size = tower_grid(tower, feats.shape[2])
    if tuple(feats.shape[2:]) != size:
        feats = F.interpolate(feats, size=size, mode="bilinear", align_corners=False)
    return feats.transpose(2, 3)


def branch_map(branch, x):
    """(map [N, C, T', M'], pooled [N, C] or None) of a branch. A tower's
    pooled vector is its own (HTS-AT's pooler, AST's cls + distillation
    tokens); a conv branch's (None) is the map's mean, taken by the caller
    where it always was (the order of the graph's nodes sets the order
    gradients are summed in, so the default path stays bit-identical)."""
    if isinstance(branch, AudioTower):
        out = branch(x)
        return out.frames.transpose(1, 2).unsqueeze(-1), out.features   # [N, C, T', 1], [N, C]
    return branch(x), None


def window_seconds(tower):
    """The span of audio the tower's frames cover: HTS-AT's max_length_s
    (a shorter clip repeat- or zero-padded to it), AST's max_length frames of
    10 ms (kaldi's frame shift; zero-padded)."""
    fe = tower.fe
    return fe.nb_max_samples / fe.sampling_rate if tower.is_clap else fe.max_length * 0.01


def clip_span(tower, seconds):
    """(share of the tower's frames that hold the clip, share of the clip they
    hold) for a clip of ``seconds``. A 4-s clip in HTS-AT's 10-s window is
    repeated 2.5 times: "A then B" would reach the temporal encoder as
    A B A B A; a clip longer than the window is cut to its start."""
    window = window_seconds(tower)
    return min(1.0, seconds / window), min(1.0, window / seconds)


def leading(fmap, share):
    """The first ``share`` of a map's time steps [N, C, T, M] (at least one)."""
    if share >= 1.0:
        return fmap
    return fmap[:, :, :max(1, math.ceil(fmap.shape[2] * share - 1e-6))]


def align_time(fmap, frames):
    """A map pooled to ``frames`` steps and one band (the temporal encoder
    concatenates the two branches' maps; a tower and a conv branch differ)."""
    if fmap.shape[2:] == (frames, 1):
        return fmap
    return F.adaptive_avg_pool2d(fmap, (frames, 1))


def is_tower(branch):
    return isinstance(branch, AudioTower)

