"""RadarEncoder (seed 001 sec. 3.2): multi-view radar maps -> a feature sequence.

Each view (range-time [256, T], Doppler-time [128, T], azimuth-time [128, T])
has its own Conv1d stack over time with the bins as channels; the views are
concatenated per time step and fused by a linear layer, then a transformer
with a padding mask relates time steps. The first convolution has stride
``downsample`` (kernel = stride: non-overlapping patches of frames, as a ViT
patchifies), then a kernel-3 convolution mixes neighbouring patches; the
transformer sees T / downsample tokens (496 frames -> 31 tokens at stride
16). Patchifying first makes the encoder ~3x cheaper than a full-rate
kernel-3 convolution over 512 input bins, which matters on a CPU.

Pooling of the sequence into one vector:
  eot        a learned end-of-sequence token appended after the frames; its
             transformer output is the clip feature (the seeds' baseline,
             mmExpert's ``x[:, -1, :]``). Padding is masked, so it attends to
             the valid frames only.
  mean       mask-aware mean over valid tokens.
  attention  one learned query attends over the valid tokens.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

VIEW_DIMS = {"range_time": 256, "doppler_time": 128, "azimuth_time": 128}
VIEWS_BY_OPTION = {"all": ("range_time", "doppler_time", "azimuth_time"),
                   "range": ("range_time",), "doppler": ("doppler_time",),
                   "azimuth": ("azimuth_time",)}


@dataclass
class RadarOutput:
    features: torch.Tensor  # [B, D] pooled clip feature (not normalised)
    sequence: torch.Tensor  # [B, T', D] per-token features
    mask: torch.Tensor      # [B, T'] bool, True = valid token


def downsample_mask(mask, stride):
    """Frame mask [B, T] -> token mask [B, T // stride]: a token is valid if any
    of its frames is (the same patches the strided convolution sees)."""
    B, T = mask.shape
    T2 = T // stride
    return mask[:, :T2 * stride].reshape(B, T2, stride).any(-1)


def sinusoidal_positions(n, dim):
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe  # [n, dim]


class RadarEncoder(nn.Module):
    def __init__(self, embed_dim=256, radar_views="all", input_dims=None, dropout=0.1,
                 max_sequence_length=496, use_layer_norm=True, use_positional_encoding=False,
                 num_layers=2, num_heads=4, mlp_ratio=2.0, downsample=8, pooling="eot"):
        super().__init__()
        if radar_views not in VIEWS_BY_OPTION:
            raise ValueError(f"radar_views must be one of {sorted(VIEWS_BY_OPTION)}, got {radar_views!r}")
        if pooling not in ("eot", "mean", "attention"):
            raise ValueError(f"pooling must be eot, mean or attention, got {pooling!r}")
        if max_sequence_length % downsample:
            raise ValueError(f"max_sequence_length={max_sequence_length} must be a multiple of "
                             f"downsample={downsample}")
        dims = dict(VIEW_DIMS, **(input_dims or {}))
        self.views = VIEWS_BY_OPTION[radar_views]
        self.embed_dim, self.downsample, self.pooling = embed_dim, downsample, pooling
        self.max_tokens = max_sequence_length // downsample
        half = embed_dim // 2
        self.view_encoders = nn.ModuleDict({
            v: nn.Sequential(
                nn.Conv1d(dims[v], half, kernel_size=downsample, stride=downsample), nn.GELU(),
                nn.Conv1d(half, embed_dim, kernel_size=3, padding=1), nn.GELU())
            for v in self.views})
        self.fusion = nn.Linear(embed_dim * len(self.views), embed_dim)
        # +1 position for the EOT token.
        self.register_buffer("pos", sinusoidal_positions(self.max_tokens + 1, embed_dim),
                             persistent=False)
        self.use_positional_encoding = use_positional_encoding
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(embed_dim, num_heads, int(embed_dim * mlp_ratio), dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(num_layers)])
        self.ln_final = nn.LayerNorm(embed_dim) if use_layer_norm else nn.Identity()
        if pooling == "eot":
            self.eot_token = nn.Parameter(torch.randn(embed_dim) * 0.02)
        elif pooling == "attention":
            self.pool_query = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
            self.pool_attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable

    def embed(self, radar, mask):
        """Per-view convolutions and fusion: dict of [B, C_v, T] -> [B, T', D]."""
        missing = [v for v in self.views if v not in radar]
        if missing:
            raise KeyError(f"RadarEncoder: batch lacks radar view(s) {missing}; "
                           f"have {sorted(radar)}")
        tok_mask = downsample_mask(mask, self.downsample)  # [B, T']
        fm, tm = mask.unsqueeze(1).to(radar[self.views[0]].dtype), tok_mask.unsqueeze(1)
        feats = []
        for v in self.views:
            patch, mix = self.view_encoders[v][:2], self.view_encoders[v][2:]
            # Zero padding before each convolution, so no padded frame leaks
            # into a valid token through a kernel's edge.
            h = patch(radar[v] * fm)                      # [B, D/2, T']
            feats.append(mix(h * tm.to(h.dtype)).transpose(1, 2))  # [B, T', D]
        x = self.fusion(torch.cat(feats, -1))
        return x, tok_mask

    def forward(self, radar, mask):
        """radar: dict view -> [B, C_v, T]; mask: [B, T] bool (True = real frame)."""
        x, tok_mask = self.embed(radar, mask)  # [B, T', D], [B, T']
        B, T2, D = x.shape
        if self.pooling == "eot":
            x = torch.cat([x, self.eot_token.to(x.dtype).expand(B, 1, D)], 1)
            attn_mask = torch.cat([tok_mask, tok_mask.new_ones(B, 1)], 1)
        else:
            attn_mask = tok_mask
        if self.use_positional_encoding:
            x = x + self.pos[: x.shape[1]].to(x.dtype)
        x = self.drop(x)
        pad = ~attn_mask  # True = ignore
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, None, pad, use_reentrant=False)
            else:
                x = blk(x, src_key_padding_mask=pad)
        x = self.ln_final(x)
        seq = x[:, :T2]  # [B, T', D]
        # Padded tokens carry garbage from the residual path: zero them so any
        # consumer that forgets the mask still cannot read them.
        seq = seq * tok_mask.unsqueeze(-1).to(seq.dtype)
        if self.pooling == "eot":
            pooled = x[:, T2]
        elif self.pooling == "mean":
            m = tok_mask.unsqueeze(-1).to(seq.dtype)
            pooled = (seq * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:
            q = self.pool_query.to(seq.dtype).expand(B, 1, D)
            pooled = self.pool_attn(q, seq, seq, key_padding_mask=~tok_mask,
                                    need_weights=False)[0][:, 0]
        return RadarOutput(features=pooled, sequence=seq, mask=tok_mask)
