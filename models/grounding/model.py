"""GroundingModel: per-sample image, caption, object and entity features.

Everything here is per sample (the contract): B x B similarities, the
cross-sample entity <-> object InfoNCE and hard-negative mining live in
losses/grounding_loss.py.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_align

from data.grounding.spans import spans_to_token_mask
from models.grounding.vit import VisionTransformer
from models.towers import VisionTower, build_text_encoder, check_scratch_tower, tower_config


def _rois(boxes):
    """[B, O, 4] -> [B*O, 5] rows (batch index, x0, y0, x1, y1) for torchvision ops."""
    B, O, _ = boxes.shape
    idx = torch.arange(B, device=boxes.device, dtype=boxes.dtype).repeat_interleave(O)
    return torch.cat([idx[:, None], boxes.reshape(-1, 4)], 1)


def roi_object_features(patches, boxes, grid, patch_size, output_size=2):
    """Mean of roi_align over the patch grid: patches [B, P, C], boxes [B, O, 4]
    in pixels -> [B, O, C]. With aligned=True a pixel x sits at x/p - 0.5 on the
    grid, i.e. patch i's centre is at grid coordinate i."""
    B, P, C = patches.shape
    fmap = patches.transpose(1, 2).reshape(B, C, grid, grid)                   # [B, C, g, g]
    r = roi_align(fmap.float(), _rois(boxes.float()), output_size, spatial_scale=1.0 / patch_size,
                  sampling_ratio=-1, aligned=True)                             # [B*O, C, s, s]
    return r.mean((2, 3)).reshape(B, -1, C).to(patches.dtype)


def span_pool(tokens, token_mask, pooling="mean"):
    """tokens [B, L, D], token_mask [B, E, L] -> [B, E, D] (zeros for empty spans)."""
    m = token_mask.unsqueeze(-1)                                               # [B, E, L, 1]
    t = tokens.unsqueeze(1)                                                    # [B, 1, L, D]
    if pooling == "max":
        out = t.masked_fill(~m, float("-inf")).amax(2)
        return torch.where(token_mask.any(-1, keepdim=True), out, torch.zeros_like(out))
    return (t * m).sum(2) / m.sum(2).clamp_min(1)


class GatedCrossAttention(nn.Module):
    """Entity spans attend to their own image's patches; a gate decides how
    much of what they found joins the text feature (seed sec. 6)."""

    def __init__(self, dim, heads=4):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, queries, keys, return_weights=False):  # [B, E, D], [B, P, D]
        kv = self.norm_kv(keys)
        a, w = self.attn(self.norm_q(queries), kv, kv, need_weights=return_weights)
        g = torch.sigmoid(self.gate(torch.cat([queries, a], -1)))
        out = queries + g * a
        return (out, w) if return_weights else out


class GroundingModel(nn.Module):
    def __init__(self, image_size=64, patch_size=8, vision_width=128, vision_depth=4, vision_heads=4, stem="linear",
                 embed_dim=128, object_pooling="roi_align", roi_output_size=2, crop_size=32,
                 entity_pooling="mean", text_head_layers=1, cross_attention=False,
                 masked_negatives=True, vision=None, text=None):
        """``vision``: the model.vision tower section (pretrained null: the ViT
        from scratch of the vision_* keys; else a CLIPVisionModel / ViTModel
        folder run at its native resolution). ``text``: the model.text section
        (null: the bundled MiniLM; a CLIP folder: its text tower)."""
        super().__init__()
        if object_pooling not in ("roi_align", "crop"):
            raise ValueError(f"model.object_pooling must be roi_align or crop, got {object_pooling!r}")
        if entity_pooling not in ("mean", "max"):
            raise ValueError(f"model.entity_pooling must be mean or max, got {entity_pooling!r}")
        self.patch_size, self.grid = patch_size, image_size // patch_size
        self.object_pooling, self.roi_output_size, self.crop_size = object_pooling, roi_output_size, crop_size
        self.entity_pooling, self.masked_negatives = entity_pooling, masked_negatives
        v = tower_config(vision, "model.vision")
        self.pretrained_vision = v["pretrained"] is not None
        if self.pretrained_vision:
            # the checkpoint's own patch grid at its native resolution; masks drawn
            # on the data's grid are resampled to it, boxes mapped to it
            self.visual = VisionTower(v, "model.vision", use_mask_token=True)
            vision_width = self.visual.hidden_size
            self.patch_grid = self.visual.grid_size                         # (H', W')
        else:
            check_scratch_tower(v, "model.vision")
            self.visual = VisionTransformer(image_size, patch_size, vision_width, vision_depth, vision_heads,
                                            stem=stem)
            self.patch_grid = (self.grid, self.grid)
            if v["freeze"]:
                self.visual.requires_grad_(False)
        self.image_proj = nn.Linear(vision_width, embed_dim)
        self.object_proj = nn.Linear(vision_width, embed_dim)
        self.text = build_text_encoder(text, "model.text", embed_dim)
        # a small trainable layer over the (frozen) text tokens so that span
        # features can specialise; the caption feature is its masked mean
        self.text_head = nn.ModuleList(
            nn.TransformerEncoderLayer(embed_dim, 4, 4 * embed_dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(text_head_layers))
        self.text_norm = nn.LayerNorm(embed_dim)
        self.entity_proj = nn.Linear(embed_dim, embed_dim)
        self.cross_attention = GatedCrossAttention(embed_dim) if cross_attention else None

    def train(self, mode=True):
        super().train(mode)
        if not self.pretrained_vision and not any(p.requires_grad for p in self.visual.parameters()):
            self.visual.eval()   # a frozen scratch tower too: no dropout, deterministic features
        return self

    def set_grad_checkpointing(self, enable=True):
        if self.pretrained_vision:
            self.visual.set_grad_checkpointing(enable)
        else:
            self.visual.grad_checkpointing = enable
        self.text.set_grad_checkpointing(enable)

    def _visual(self, image, patch_mask=None):
        """-> pooled [B, C], patches [B, P, C] (row-major on patch_grid)."""
        if not self.pretrained_vision:
            return self.visual(image, patch_mask)
        out = self.visual((image + 1) / 2, patch_mask)   # the data's [-1, 1] -> the tower's [0, 1]
        return out.features, out.tokens

    def encode_image(self, image, patch_mask=None):
        """-> image features [B, D] and patch features [B, P, C] (before projection)."""
        cls, patches = self._visual(image, patch_mask)
        return self.image_proj(cls), patches

    def encode_objects(self, image, patches, boxes):
        """boxes [B, O, 4] pixels -> [B, O, D]."""
        B, O, _ = boxes.shape
        if self.pretrained_vision:
            feats = self._tower_objects(image, patches, boxes)
        elif self.object_pooling == "roi_align":
            feats = roi_object_features(patches, boxes, self.grid, self.patch_size, self.roi_output_size)
        else:  # crop-and-resize each box from the pixels, encode it on its own
            crops = roi_align(image.float(), _rois(boxes.float()), self.crop_size, aligned=True)
            feats, _ = self.visual(crops.to(image.dtype))          # [B*O, C]
            feats = feats.reshape(B, O, -1)
        return self.object_proj(feats)

    def _tower_objects(self, image, patches, boxes):
        """Object features of a pretrained tower: RoI Align on its patch grid, or
        each box cropped and resized to its native resolution and encoded. -> [B, O, C]"""
        B, O, _ = boxes.shape
        if self.object_pooling == "roi_align":
            h, w = self.patch_grid
            fmap = patches.transpose(1, 2).reshape(B, -1, h, w)                    # [B, C, H', W']
            r = self.visual.roi_features(fmap.float(), list(boxes.float()), tuple(image.shape[-2:]),
                                         self.roi_output_size)                      # [B*O, C, s, s]
            return r.mean((2, 3)).reshape(B, O, -1).to(patches.dtype)
        crops = self.visual.crop_and_resize(((image + 1) / 2).float(), list(boxes.float()))
        return self.visual(crops.to(image.dtype)).features.reshape(B, O, -1)       # [B, O, C]

    def encode_text(self, captions, entity_spans, entity_valid):
        """-> caption features [B, D], entity features [B, E, D], entity valid [B, E],
        token features [B, L, D], token mask [B, E, L]."""
        out = self.text(captions)
        tok, mask = out.tokens, out.mask                                   # [B, L, D], [B, L]
        for blk in self.text_head:
            tok = blk(tok, src_key_padding_mask=~mask)
        tok = self.text_norm(tok)
        m = mask.unsqueeze(-1).to(tok.dtype)
        text_features = (tok * m).sum(1) / m.sum(1).clamp_min(1)
        tmask = spans_to_token_mask(out.offsets, entity_spans.to(out.offsets.device), entity_valid)
        ent = span_pool(tok, tmask, self.entity_pooling)                   # [B, E, D]
        return text_features, ent, entity_valid & tmask.any(-1), tok, tmask

    def entity_features(self, ent, patches):
        if self.cross_attention is not None:
            ent = self.cross_attention(ent, self.object_proj(patches))
        return self.entity_proj(ent)

    def forward(self, batch):
        image = batch["image"]
        patch_mask = batch.get("patch_mask")
        image_features, patches = self.encode_image(image, patch_mask)
        text_features, ent, ent_valid, _, _ = self.encode_text(
            batch["caption"], batch["entity_spans"], batch["entity_valid"])
        out = {"image_features": image_features,                            # [B, D]
               "text_features": text_features,                              # [B, D]
               "object_features": self.encode_objects(image, patches, batch["boxes"]),  # [B, O, D]
               "object_valid": batch["obj_valid"],                          # [B, O]
               "entity_features": self.entity_features(ent, patches),      # [B, E, D]
               "entity_valid": ent_valid}                                   # [B, E]
        if self.masked_negatives and "neg_patch_mask" in batch:
            # the same view with one named object hidden: a negative for this caption
            neg = batch["neg_patch_mask"] if patch_mask is None else batch["neg_patch_mask"] | patch_mask
            out["masked_image_features"], _ = self.encode_image(image, neg)
        return out
