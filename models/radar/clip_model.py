"""CLIPModel (seed 001 sec. 3.1): a radar tower + a text tower, per-sample outputs.

The radar tower is the ``model.radar`` section's: RadarEncoder from scratch
(``pretrained: null``, the default) or a pretrained ViT on the maps
(models/towers/radar.py, mmExpert's set-up); the text tower is the
``model.text`` section's (models/towers/text.py: today's TextEncoder with its
caption cache for plain text models, else the text tower of a CLIP / CLAP
folder). Both give the same outputs (RadarOutput, TextOutput), so the
sequence similarity, temporal negatives, evaluation and stage 2 do not see
which one runs.

``model(batch)`` returns only per-sample features (global vectors, sequences
and their masks); every B x B term (similarities, logit scale and bias)
lives in the criterion (losses/radar_loss.py), as the family contract asks.

Extra per-sample views for temporal learning (seed 000 sec. 3), computed
only when asked for:
  swap_*   the caption with its actions in swapped order (``batch["swapped_caption"]``),
           a hard negative for the radar clip;
  rev_*    the radar clip reversed in time within its valid frames, a hard
           negative for the caption;
  aug_*    the radar clip under a temporal perturbation (stretch and shift)
           that keeps its meaning, for the consistency loss.
"""
import torch
import torch.nn as nn

from models.radar.encoder import RadarEncoder
from models.text_head import TEXT_SIDE_DEFAULTS
from models.towers import RadarTower, build_text_encoder, check_scratch_tower, tower_config

# model.text keys of checkpoints saved before the tower sections (issue 11)
LEGACY_TEXT_KEYS = {"model_name": "pretrained", "freeze_backbone": "freeze"}


def content_token_mask(mask, offsets):
    """Drop special tokens ([CLS], [SEP]; offsets (0, 0)) from a text mask: they
    carry no position in the caption, so they must not take part in
    token-to-time alignment."""
    return mask & (offsets[..., 1] > offsets[..., 0])


def reverse_valid(x, mask):
    """Reverse each sample's valid frames in time; padding stays at the end.
    x [B, C, T], mask [B, T] (valid frames are a prefix)."""
    T = x.shape[-1]
    length = mask.sum(1, keepdim=True)  # [B, 1]
    t = torch.arange(T, device=x.device).unsqueeze(0)
    idx = torch.where(t < length, length - 1 - t, t)  # [B, T]
    return x.gather(-1, idx.unsqueeze(1).expand_as(x))


def perturb_time(x, mask, factor, shift):
    """Resample each sample's valid frames by ``factor`` [B] (> 1 = faster) and
    start them ``shift`` [B] frames later (nearest-frame lookup).
    x [B, C, T], mask [B, T] -> new x [B, C, T], new mask [B, T]."""
    B, C, T = x.shape
    length = mask.sum(1).float()  # [B]
    new_len = torch.clamp((length / factor).floor() + shift, max=T)
    t = torch.arange(T, device=x.device).float().unsqueeze(0)  # [1, T]
    src = ((t - shift.unsqueeze(1)) * factor.unsqueeze(1)).floor()
    src = torch.minimum(src.clamp_min(0), (length - 1).unsqueeze(1)).long()
    new_mask = t < new_len.unsqueeze(1)
    silent = t < shift.unsqueeze(1)  # the leading shift frames are silent but part of the clip
    keep = (new_mask & ~silent).unsqueeze(1).to(x.dtype)
    return x.gather(-1, src.unsqueeze(1).expand(B, C, T)) * keep, new_mask


def pad_tokens(x, length):
    """x [B, L, ...] zero-padded (False for a mask) to [B, length, ...]."""
    if x.shape[1] >= length:
        return x
    return torch.cat([x, x.new_zeros((x.shape[0], length - x.shape[1]) + x.shape[2:])], 1)


class CLIPModel(nn.Module):
    def __init__(self, radar_encoder, text_encoder, temporal_negatives=False,
                 consistency=False, max_stretch=0.2, max_shift=16):
        super().__init__()
        self.radar_encoder = radar_encoder
        self.text_encoder = text_encoder
        self.temporal_negatives = temporal_negatives
        self.consistency = consistency
        self.max_stretch, self.max_shift = max_stretch, max_shift

    def train(self, mode=True):
        super().train(mode)   # a pretrained tower keeps its frozen parts in eval mode itself
        if not any(p.requires_grad for p in self.radar_encoder.parameters()):
            self.radar_encoder.eval()   # a frozen RadarEncoder too: no dropout, fixed features
        return self

    def set_grad_checkpointing(self, enable=True):
        self.radar_encoder.set_grad_checkpointing(enable)
        self.text_encoder.set_grad_checkpointing(enable)

    def radar_views(self, batch):
        return {v: batch[v] for v in self.radar_encoder.views}

    def encode_radar(self, radar, mask, prefix="radar"):
        out = self.radar_encoder(radar, mask)
        return {f"{prefix}_features": out.features,   # [B, D]
                f"{prefix}_seq": out.sequence,          # [B, T', D]
                f"{prefix}_mask": out.mask}             # [B, T']

    def encode_text(self, captions, prefix="text"):
        out = self.text_encoder(list(captions))
        return {f"{prefix}_features": out.features,    # [B, D]
                f"{prefix}_tokens": out.tokens,         # [B, L, D]
                f"{prefix}_mask": content_token_mask(out.mask, out.offsets)}  # [B, L]

    def encode_swapped(self, batch, out):
        """The order-swapped captions' features. Only the multi-action clips'
        (``has_swap``) go through the text tower; the other rows, whose
        "swapped" caption is their own and which the loss multiplies by 0, get
        the caption's own features, detached (the same values the tower would
        give them in eval mode, and the same zero gradient)."""
        caps, has = batch["swapped_caption"], batch.get("has_swap")
        if has is None or bool(has.all()):
            return self.encode_text(caps, "swap")
        own = {f"swap_{k}": out[f"text_{k}"].detach() for k in ("features", "tokens", "mask")}
        idx = has.nonzero()[:, 0].to(out["text_features"].device)
        if idx.numel() == 0:
            return own
        sub = self.encode_text([caps[i] for i in idx.tolist()], "swap")
        L = max(own["swap_tokens"].shape[1], sub["swap_tokens"].shape[1])
        for k in ("swap_tokens", "swap_mask"):   # one token length for both
            own[k], sub[k] = pad_tokens(own[k], L), pad_tokens(sub[k], L)
        return {k: own[k].index_copy(0, idx, sub[k].to(own[k].dtype)) for k in own}

    def forward(self, batch):
        radar, mask = self.radar_views(batch), batch["radar_mask"]
        out = self.encode_radar(radar, mask)
        out.update(self.encode_text(batch["caption"]))
        if self.training and self.temporal_negatives and "swapped_caption" in batch:
            out.update(self.encode_swapped(batch, out))
            rev = {v: reverse_valid(x, mask) for v, x in radar.items()}
            out.update(self.encode_radar(rev, mask, "rev"))
        if self.training and self.consistency:
            # One draw per sample, shared by all views: they must stay aligned in time.
            B = mask.shape[0]
            factor = 1 + (torch.rand(B, device=mask.device) * 2 - 1) * self.max_stretch
            shift = (torch.rand(B, device=mask.device) * self.max_shift).floor()
            aug = {v: perturb_time(x, mask, factor, shift) for v, x in radar.items()}
            aug_mask = next(iter(aug.values()))[1]
            out.update(self.encode_radar({v: a[0] for v, a in aug.items()}, aug_mask, "aug"))
        return out


def text_section(text):
    """The model.text section in today's keys. A checkpoint's config from
    before issue 11 has model_name / freeze_backbone; on --resume it also has
    the new keys, but those came from the current defaults (the checkpoint
    predates them), so the old keys win. The text-side keys of issue 13
    (head_layers, head_heads, head_dim, token_dropout) missing: off, as before."""
    t = dict(text or {})
    for old, new in LEGACY_TEXT_KEYS.items():
        if old in t:
            t[new] = t.pop(old)
    for k, v in TEXT_SIDE_DEFAULTS.items():
        t.setdefault(k, v)
    return t


def radar_section(model_cfg):
    """The model.radar section, defaults filled in (a checkpoint from before
    issue 11 has none: today's RadarEncoder)."""
    r = dict(model_cfg.get("radar") or {})
    r.update(tower_config(r, "model.radar"))
    r.setdefault("pooling", "cls")
    return r


def build_radar_encoder(cfg):
    m, d = cfg["model"], cfg["data"]
    r = radar_section(m)
    if r["pretrained"] is not None:
        # the RadarEncoder keys (num_layers, num_heads, downsample, dropout, pooling,
        # use_*) are the checkpoint's own here: it has its own blocks and patch size
        return RadarTower(r, "model.radar", embed_dim=m["embed_dim"], radar_views=d["radar_views"],
                          max_sequence_length=d["max_motion_length"], pooling=r["pooling"])
    check_scratch_tower(r, "model.radar")
    enc = RadarEncoder(embed_dim=m["embed_dim"], radar_views=d["radar_views"], dropout=m["dropout"],
                       max_sequence_length=d["max_motion_length"],
                       use_layer_norm=m["use_layer_norm"],
                       use_positional_encoding=m["use_positional_encoding"],
                       num_layers=m["num_layers"], num_heads=m["num_heads"],
                       downsample=m["downsample"], pooling=m["pooling"])
    if r["freeze"]:   # as grounding's scratch tower: its initial weights stay (a random-feature baseline)
        enc.requires_grad_(False)
    return enc


def build_clip_model(cfg):
    m, loss = cfg["model"], cfg["loss"]
    # the text tower first: the same draws from the seeded generator as before issue 11
    text = build_text_encoder(text_section(m["text"]), "model.text", m["embed_dim"])
    return CLIPModel(build_radar_encoder(cfg), text,
                     temporal_negatives=loss["temporal_negative_weight"] > 0,
                     consistency=loss["consistency_weight"] > 0,
                     max_stretch=loss["consistency_max_stretch"],
                     max_shift=loss["consistency_max_shift"])
