"""Audio towers of sCLAP: the SED and DOA convolutional branches, the
TemporalAudioEncoder of seed 002 and the DOA heads.

No BatchNorm anywhere (GroupNorm instead): the model must not mix samples,
which is what keeps gradient accumulation exact.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBranch(nn.Module):
    """[B, in_ch, T, M] -> feature map [B, C, T / 2, M / freq_patch].

    A stem convolution over bands of `freq_patch` mel bins (kernel 3 frames x
    freq_patch bins, stride freq_patch along frequency) then 3x3 convolutions.
    Time is pooled only once: the temporal encoder and the DOA head need to
    know *when* things happen. (Measured here: 3x faster on CPU than a
    16-32-64-128 3x3 VGG stack on the full-resolution map.)"""

    def __init__(self, in_ch, channels=(32, 32, 64), freq_patch=8):
        super().__init__()
        c0, c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, c0, (3, freq_patch), stride=(1, freq_patch), padding=(1, 0)),
            nn.GroupNorm(8, c0), nn.GELU(), nn.AvgPool2d((2, 1)),
            nn.Conv2d(c0, c1, 3, padding=1), nn.GroupNorm(8, c1), nn.GELU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.GroupNorm(8, c2), nn.GELU())
        self.out_channels = c2

    def forward(self, x):
        return self.net(x)


class TemporalAudioEncoder(nn.Module):
    """Seed 002: split the feature map's time axis into n_chunks, mean each chunk
    over (T, F), project, add a learnable position, 2-layer Transformer,
    LayerNorm, mean over chunks, MLP. [B, C, T, F] -> [B, D]."""

    def __init__(self, in_channels, dim, n_chunks=4, layers=2, heads=8, dropout=0.1):
        super().__init__()
        self.n_chunks = n_chunks
        self.proj = nn.Linear(in_channels, dim)
        self.pos = nn.Parameter(torch.zeros(1, n_chunks, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout, batch_first=True,
                                           activation="gelu", norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, fmap, return_tokens=False):
        """-> [B, D]; with return_tokens also the normalised chunk tokens
        [B, n_chunks, D] (the event slots read them, models/sclap/slots.py)."""
        T = fmap.shape[2]
        if T < self.n_chunks:
            raise ValueError(f"feature map has {T} frames, fewer than n_chunks={self.n_chunks}")
        chunk = T // self.n_chunks  # trailing frames beyond n_chunks * chunk are dropped, as in the seed
        seq = torch.stack([fmap[:, :, k * chunk:(k + 1) * chunk].mean(dim=(2, 3))
                           for k in range(self.n_chunks)], dim=1)            # [B, n_chunks, C]
        h = self.transformer(self.proj(seq) + self.pos)                       # [B, n_chunks, D]
        tokens = self.norm(h)
        out = self.mlp(tokens.mean(dim=1))                                    # [B, D]
        return (out, tokens) if return_tokens else out


class DOAHead(nn.Module):
    """Directions of n_events events from the DOA feature map.

    The map is averaged over frequency and pooled to `time_steps` steps, so the
    MLP sees when each direction is active. A skip path adds the front end's
    intensity vectors, averaged over mel bands with W-energy weights and pooled
    to the same steps: direction is linear in them, the conv stack need not
    rediscover that. Output [B, n_events, 3] in [-1, 1] (tanh); targets are
    unit vectors, the loss is 1 - cos."""

    def __init__(self, in_channels, n_events=2, time_steps=8, hidden=256, iv_skip=True):
        super().__init__()
        self.n_events, self.time_steps, self.iv_skip = n_events, time_steps, iv_skip
        n_in = (in_channels + (3 if iv_skip else 0)) * time_steps
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(),
                                 nn.Linear(hidden, 3 * n_events), nn.Tanh())

    def forward(self, fmap, feats=None):
        x = F.adaptive_avg_pool1d(fmap.mean(dim=3), self.time_steps)   # [B, C, steps]
        if self.iv_skip:
            energy = torch.softmax(3.0 * feats[:, 0].flatten(1), dim=1).view_as(feats[:, 0])  # [B, T, M]
            iv = (feats[:, 4:7] * energy.unsqueeze(1)).sum(dim=3)          # [B, 3, T]
            iv = F.adaptive_avg_pool1d(iv, self.time_steps) * feats.shape[2]  # O(1) scale
            x = torch.cat([x, iv], dim=1)
        return self.mlp(x.flatten(1)).view(-1, self.n_events, 3)


class AttentionDOAHead(nn.Module):
    """Directions of n_events events as attention-weighted means of the front
    end's intensity vectors (the default DOA head).

    The mean active intensity over the bins where a source dominates points to
    it (that is the classical estimator's physics); what the classical method
    does not know is *which* bins those are. Here, per event, a softmax over
    (time, band) picks them: logit_e(t, m) = time_e(t) + bin(t, m), with the
    time profile read from the DOA feature map and the frame's position in
    the clip (so slot 0 can be the earlier event, slot 1 the later) and the
    per-bin term read from the 4 log-mels (where direct sound stands above
    noise and reverberation). direction_e = normalise(sum w_e iv) plus a
    correction read from the map under the same attention (zero at
    initialisation), which can learn the room's systematic bias.
    Output [B, n_events, 3]; the loss normalises (1 - cos)."""

    def __init__(self, in_channels, n_events=2, hidden=64):
        super().__init__()
        self.n_events = n_events
        self.time_logits = nn.Sequential(nn.Conv1d(in_channels + 1, hidden, 3, padding=1), nn.GELU(),
                                         nn.Conv1d(hidden, n_events, 1))
        self.bin_logits = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 1, 1))
        self.correction = nn.Linear(in_channels, 3)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def forward(self, fmap, feats):
        B, _, T, M = feats.shape
        tmap = fmap.mean(dim=3)                                            # [B, C, T']
        pos = torch.linspace(-1, 1, tmap.shape[2], device=tmap.device, dtype=tmap.dtype)
        x = torch.cat([tmap, pos.expand(B, 1, -1)], dim=1)                # [B, C + 1, T']
        time = F.interpolate(self.time_logits(x), size=T, mode="linear", align_corners=False)
        logits = time.unsqueeze(3) + self.bin_logits(feats[:, :4])         # [B, E, T, M]
        w = torch.softmax(logits.flatten(2).float(), dim=2).view(B, self.n_events, T, M)
        iv = torch.einsum("betm,bctm->bec", w, feats[:, 4:7].float())     # [B, E, 3]
        w_t = F.adaptive_avg_pool1d(w.sum(3), tmap.shape[2]) * (T / tmap.shape[2])  # [B, E, T'], sums to 1
        ctx = torch.einsum("bes,bcs->bec", w_t.to(tmap.dtype), tmap)       # [B, E, C]
        return F.normalize(iv, dim=-1) + self.correction(ctx).float()
