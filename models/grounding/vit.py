"""A small ViT trained from scratch: patch grid kept for region features,
a learned mask token for dynamic masking and masked-object negatives."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class PatchEmbedding(nn.Module):
    """linear: one p x p strided conv (plain ViT). conv: log2(p) stride-2 3x3
    convs ("early convolutions help transformers see better", Xiao et al.
    2021): a locality prior that makes a ViT trained from scratch on a few
    thousand small images learn shape and texture much sooner. Per-sample
    only (no BatchNorm), as the family contract requires."""

    def __init__(self, patch_size, width, in_chans=3, stem="linear"):
        super().__init__()
        self.patch_size = patch_size
        if stem == "linear":
            self.proj = nn.Conv2d(in_chans, width, patch_size, patch_size)
        elif stem == "conv":
            n = patch_size.bit_length() - 1
            if 2 ** n != patch_size:
                raise ValueError(f"model.stem conv needs a power-of-two patch_size, got {patch_size}")
            chans = [in_chans] + [max(8, width >> (n - 1 - i)) for i in range(n)]
            layers = []
            for i in range(n):
                layers += [nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1), nn.GELU()]
            self.proj = nn.Sequential(*layers[:-1])
        else:
            raise ValueError(f"model.stem must be linear or conv, got {stem!r}")

    def forward(self, x):                                  # [B, 3, H, W]
        x = self.proj(x)                                   # [B, C, H/p, W/p]
        return x.flatten(2).transpose(1, 2), x.shape[-2:]  # [B, P, C], (gh, gw)


class VisionTransformer(nn.Module):
    def __init__(self, image_size=64, patch_size=8, width=128, depth=4, heads=4, mlp_ratio=4.0, stem="linear"):
        super().__init__()
        self.grid = image_size // patch_size
        self.patch_embed = PatchEmbedding(patch_size, width, stem=stem)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid * self.grid, width) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.width, self.grad_checkpointing = width, False

    def _pos(self, gh, gw):
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed
        # other input sizes (object crops) use the grid's embeddings resampled
        pos = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(gh, gw), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x, patch_mask=None):
        """x [B, 3, H, W]; patch_mask [B, P] bool (True = replace by the mask token).
        Returns cls [B, C] and patch features [B, P, C] (grid row-major)."""
        t, (gh, gw) = self.patch_embed(x)
        if patch_mask is not None:
            t = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(t.dtype), t)
        t = t + self._pos(gh, gw)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1).to(t.dtype), t], 1)  # [B, 1+P, C]
        for blk in self.blocks:
            t = checkpoint(blk, t, use_reentrant=False) if self.grad_checkpointing and self.training else blk(t)
        t = self.norm(t)
        return t[:, 0], t[:, 1:]
