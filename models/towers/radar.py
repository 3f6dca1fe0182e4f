"""A pretrained ViT on radar maps, as mmExpert (timm ViT-B/16, pretrained,
in_chans=1) but with transformers' ViTModel / CLIPVisionModel: the patch
embedding folded from 3 channels to 1, the position embeddings resampled to
the map's patch grid, the views stacked along the bin axis ("side by side"
so that a patch column is one span of time in every view).

Output contract of RadarEncoder (models/radar/encoder.py): RadarOutput(
features [B, D], sequence [B, T', D] one token per patch column, mask
[B, T']). Padded frames are masked out of attention and zeroed in the
sequence.
"""
import torch
import torch.nn as nn
from transformers import CLIPVisionModel, ViTModel

from models.radar.encoder import VIEW_DIMS, VIEWS_BY_OPTION, RadarOutput, downsample_mask
from models.towers.loading import VISION_TYPES, load_tower
from models.towers.trainable import Tower
from models.towers.vision import (embed_patches, fold_patch_embedding, interpolate_pos_embed,
                                  native_grid, patch_conv, pos_embed, run_blocks, set_patch_conv,
                                  set_pos_embed)


class RadarTower(Tower):
    def __init__(self, settings, key="model.radar", backbone=None, embed_dim=256,
                 radar_views="all", input_dims=None, max_sequence_length=496, pooling="cls"):
        settings = dict(settings or {})
        if radar_views not in VIEWS_BY_OPTION:
            raise ValueError(f"radar_views must be one of {sorted(VIEWS_BY_OPTION)}, got {radar_views!r}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"{key}.pooling: cls or mean for a pretrained ViT, got {pooling!r}")
        if backbone is None:
            backbone, _ = load_tower(settings.get("pretrained"), VISION_TYPES, key + ".pretrained")
        if not isinstance(backbone, (CLIPVisionModel, ViTModel)):
            raise ValueError(f"{key}: RadarTower takes CLIPVisionModel or ViTModel, "
                             f"got {type(backbone).__name__}")
        dims = dict(VIEW_DIMS, **(input_dims or {}))
        views = VIEWS_BY_OPTION[radar_views]
        p = patch_conv(backbone).stride[0]
        height = sum(dims[v] for v in views)
        for what, n in (("the stacked bins of " + "+".join(views), height),
                        ("max_sequence_length", max_sequence_length)):
            if n % p:
                raise ValueError(f"{key}: {what} = {n} is not a multiple of the checkpoint's "
                                 f"patch size {p}")
        grid = (height // p, max_sequence_length // p)
        # Surgery before the Tower sees the weights (it freezes what exists).
        set_patch_conv(backbone, fold_patch_embedding(patch_conv(backbone), 1))
        set_pos_embed(backbone, interpolate_pos_embed(pos_embed(backbone), native_grid(backbone), grid))
        unused = ("pooler.",) if pooling == "mean" and getattr(backbone, "pooler", None) else ()
        super().__init__(backbone, settings, key, unused)
        self.views, self.patch_size, self.grid, self.pooling = views, p, grid, pooling
        self.downsample = p   # frames per sequence token, as RadarEncoder.downsample
        self.proj = nn.Linear(backbone.config.hidden_size, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, radar, mask):
        """radar: dict view -> [B, C_v, T]; mask: [B, T] bool (True = real frame)."""
        missing = [v for v in self.views if v not in radar]
        if missing:
            raise KeyError(f"{self.key}: batch lacks radar view(s) {missing}; have {sorted(radar)}")
        img = torch.cat([radar[v] for v in self.views], 1)                # [B, H, T]
        img = (img * mask.unsqueeze(1).to(img.dtype)).unsqueeze(1)         # [B, 1, H, T]
        tok_mask = downsample_mask(mask, self.patch_size)                  # [B, T']
        x, (h, w) = embed_patches(self.backbone, img, self.grid)           # [B, 1+h*w, D]
        keys = torch.cat([tok_mask.new_ones(len(x), 1),
                          tok_mask.unsqueeze(1).expand(-1, h, -1).reshape(len(x), -1)], 1)
        tokens, cls = run_blocks(self.backbone, x, keys)
        cols = tokens[:, 1:].reshape(len(x), h, w, -1).mean(1)            # [B, T', D]
        seq = self.proj(cols) * tok_mask.unsqueeze(-1).to(cols.dtype)
        if self.pooling == "cls":
            pooled = self.proj(cls)
        else:
            m = tok_mask.unsqueeze(-1).to(seq.dtype)
            pooled = (seq * m).sum(1) / m.sum(1).clamp_min(1.0)
        return RadarOutput(features=pooled, sequence=seq, mask=tok_mask)
