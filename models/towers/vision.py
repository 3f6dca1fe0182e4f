"""Pretrained image towers (CLIPVisionModel, ViTModel) and the surgery that
fits a ViT to other inputs: patch embeddings folded to another channel
count, position embeddings resampled to another patch grid.

The tower runs the checkpoint's own layers but builds the token sequence
itself (patch convolution, class token, position embeddings), so any grid
works, a key-padding mask can be passed (radar maps), and the patch grid
comes back as [B, C, H', W'] for RoI Align.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_align
from transformers import CLIPVisionModel, ViTModel
from transformers.masking_utils import create_bidirectional_mask

from models.towers.loading import VISION_TYPES, load_tower, read_preprocessor_config
from models.towers.trainable import Tower

# Pixel statistics when a folder has no preprocessor_config.json.
DEFAULT_STATS = {"clip": ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
                 "vit": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])}


@dataclass
class VisionOutput:
    features: torch.Tensor  # [B, D] pooled (CLIP: post-norm class token; ViT: pooler or class token)
    grid: torch.Tensor      # [B, D, H', W'] patch features, final norm applied
    tokens: torch.Tensor    # [B, H' * W', D] the same, row-major


def fold_patch_embedding(conv, in_channels):
    """A copy of ``conv`` taking ``in_channels`` inputs whose response to an
    input replicated across channels equals the original's: 3 -> 1 sums the
    kernels (timm's in_chans=1); 1 -> N repeats them / N; C -> kC repeats / k."""
    w = conv.weight.detach()                             # [D, C, p, p]
    c = w.shape[1]
    if in_channels == c:
        return conv
    if in_channels == 1:
        new_w = w.sum(1, keepdim=True)
    elif in_channels % c == 0:
        k = in_channels // c
        new_w = w.repeat(1, k, 1, 1) / k
    else:
        raise ValueError(f"fold_patch_embedding: {c} -> {in_channels} channels; supported: "
                         f"-> 1, or a multiple of {c}")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None).to(w.device, w.dtype)
    with torch.no_grad():
        new.weight.copy_(new_w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def interpolate_pos_embed(pos, old_grid, new_grid, num_prefix=1):
    """[1, P + H*W, D] position embeddings -> [1, P + H'*W', D]: the grid part
    resampled bicubically (align_corners=False, as timm and transformers), the
    ``num_prefix`` class/distillation tokens kept."""
    (h, w), (nh, nw) = tuple(old_grid), tuple(new_grid)
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    if grid.shape[1] != h * w:
        raise ValueError(f"interpolate_pos_embed: {grid.shape[1]} grid positions, "
                         f"not {h}x{w}")
    if (h, w) == (nh, nw):
        return pos
    g = grid.reshape(1, h, w, -1).permute(0, 3, 1, 2)   # [1, D, H, W]
    g = F.interpolate(g.float(), size=(nh, nw), mode="bicubic", align_corners=False)
    g = g.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, nh * nw, -1)
    return torch.cat([prefix, g], 1)


# --- the two architectures behind one interface ------------------------------------------

def is_clip(model):
    return isinstance(model, CLIPVisionModel)


def patch_conv(model):
    return model.embeddings.patch_embedding if is_clip(model) else \
        model.embeddings.patch_embeddings.projection


def set_patch_conv(model, conv):
    if is_clip(model):
        model.embeddings.patch_embedding = conv
    else:
        model.embeddings.patch_embeddings.projection = conv
        model.embeddings.patch_embeddings.num_channels = conv.in_channels
    model.config.num_channels = conv.in_channels


def native_grid(model):
    size, p = model.config.image_size, model.config.patch_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    p = (p, p) if isinstance(p, int) else tuple(p)
    return size[0] // p[0], size[1] // p[1]


def pos_embed(model):
    if is_clip(model):
        return model.embeddings.position_embedding.weight.unsqueeze(0)   # [1, 1+N, D]
    return model.embeddings.position_embeddings


def set_pos_embed(model, pos):
    """Replace the stored position embeddings ([1, 1+N, D]) by new ones."""
    pos = pos.detach().clone()
    if is_clip(model):
        e = model.embeddings
        e.position_embedding = nn.Embedding(pos.shape[1], pos.shape[2]).to(pos.device, pos.dtype)
        e.position_embedding.weight.data.copy_(pos[0])
        e.num_positions, e.num_patches = pos.shape[1], pos.shape[1] - 1
        e.position_ids = torch.arange(pos.shape[1], device=pos.device).expand(1, -1)
    else:
        model.embeddings.position_embeddings = nn.Parameter(pos)


def class_token(model):
    if is_clip(model):
        return model.embeddings.class_embedding.view(1, 1, -1)
    return model.embeddings.cls_token


def run_blocks(model, x, key_mask=None):
    """Token sequence [B, 1+N, D] (positions added) through the checkpoint's
    layers; key_mask [B, 1+N] bool (True = attend). -> (tokens [B, 1+N, D]
    with the final norm applied, pooled [B, D])."""
    if is_clip(model):
        x = model.pre_layrnorm(x)
    else:
        x = model.embeddings.dropout(x)
    mask = None
    if key_mask is not None:
        mask = create_bidirectional_mask(config=model.config, inputs_embeds=x,
                                         attention_mask=key_mask.long())
    if is_clip(model):
        x = model.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
        x = model.post_layernorm(x)   # CLIP normalises the class token; the patches likewise
        return x, x[:, 0]
    for layer in model.layers:
        x = layer(x, mask)
    x = model.layernorm(x)
    return x, (model.pooler(x) if model.pooler is not None else x[:, 0])


def embed_patches(model, pixels, pos_grid, patch_mask=None, mask_token=None):
    """Pixels [B, C, H, W] -> tokens [B, 1+N, D] and the grid (h, w); position
    embeddings stored at ``pos_grid`` are resampled when the grid differs."""
    conv = patch_conv(model)
    x = conv(pixels.to(conv.weight.dtype))                # [B, D, h, w]
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)                      # [B, N, D]
    if patch_mask is not None:
        x = torch.where(patch_mask.unsqueeze(-1), mask_token.to(x.dtype), x)
    x = torch.cat([class_token(model).to(x.dtype).expand(len(x), -1, -1), x], 1)
    return x + interpolate_pos_embed(pos_embed(model), pos_grid, grid).to(x.dtype), grid


class VisionTower(Tower):
    """Images [B, 3, H, W] in [0, 1] -> VisionOutput at the checkpoint's native
    resolution (other sizes are resized to it; boxes given in the input's
    pixels are mapped to it by ``roi_features`` / ``crop_and_resize``)."""

    def __init__(self, settings, key="model.vision", backbone=None, preprocess=None,
                 use_mask_token=False):
        settings = dict(settings or {})
        if backbone is None:
            backbone, path = load_tower(settings.get("pretrained"), VISION_TYPES, key + ".pretrained")
            preprocess = read_preprocessor_config(path) if preprocess is None else preprocess
        if not isinstance(backbone, (CLIPVisionModel, ViTModel)):
            raise ValueError(f"{key}: VisionTower takes CLIPVisionModel or ViTModel, "
                             f"got {type(backbone).__name__}")
        super().__init__(backbone, settings, key)
        preprocess = preprocess or {}
        mean, std = DEFAULT_STATS["clip" if is_clip(backbone) else "vit"]
        self.register_buffer("mean", torch.tensor(preprocess.get("image_mean", mean)).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.get("image_std", std)).view(1, -1, 1, 1),
                             persistent=False)
        self.patch_size = patch_conv(backbone).stride[0]
        self.grid_size = native_grid(backbone)
        self.image_size = (self.grid_size[0] * self.patch_size, self.grid_size[1] * self.patch_size)
        self.hidden_size = backbone.config.hidden_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.hidden_size)) if use_mask_token else None

    def normalise(self, images):
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear",
                                   align_corners=False, antialias=True)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images, patch_mask=None):
        """images [B, 3, H, W] in [0, 1]; patch_mask [B, N] bool (True = replaced
        by the learned mask token, ``use_mask_token``)."""
        if patch_mask is not None:
            if self.mask_token is None:
                raise ValueError(f"{self.key}: patch_mask needs VisionTower(use_mask_token=True)")
            patch_mask = self.resample_patch_mask(patch_mask)
        x, (h, w) = embed_patches(self.backbone, self.normalise(images), self.grid_size,
                                  patch_mask, self.mask_token)
        tokens, pooled = run_blocks(self.backbone, x)
        patches = tokens[:, 1:]                                         # [B, N, D]
        grid = patches.transpose(1, 2).reshape(len(x), -1, h, w)        # [B, D, H', W']
        return VisionOutput(features=pooled, grid=grid, tokens=patches)

    def resample_patch_mask(self, patch_mask):
        """[B, g*g] mask drawn on another square patch grid (the data's) ->
        [B, H'*W'] on this tower's grid, nearest neighbour."""
        h, w = self.grid_size
        n = patch_mask.shape[1]
        if n == h * w:
            return patch_mask
        g = int(round(n ** 0.5))
        if g * g != n:
            raise ValueError(f"{self.key}: patch_mask of {n} patches is neither this tower's "
                             f"{h}x{w} grid nor a square one")
        m = patch_mask.view(-1, 1, g, g).float()
        return F.interpolate(m, size=(h, w), mode="nearest").view(len(patch_mask), -1).bool()

    def _to_native(self, boxes, input_size):
        sy, sx = self.image_size[0] / input_size[0], self.image_size[1] / input_size[1]
        scale = boxes[0].new_tensor([sx, sy, sx, sy]) if len(boxes) else None
        return [b * scale for b in boxes]

    def roi_features(self, grid, boxes, input_size, output_size=2):
        """RoI Align on the patch grid: boxes, a list of [K_i, 4] (x1, y1, x2, y2)
        in pixels of the input images of size ``input_size`` (H, W) ->
        [sum K_i, D, output_size, output_size]."""
        return roi_align(grid, self._to_native(boxes, input_size), output_size,
                         spatial_scale=1.0 / self.patch_size, aligned=True)

    def crop_and_resize(self, images, boxes, output_size=None):
        """Box crops of ``images`` resized to ``output_size`` (default: native)."""
        size = output_size or self.image_size
        return roi_align(images, [b.to(images.dtype) for b in boxes], size, spatial_scale=1.0,
                         aligned=True)
