"""TimesCLIP (seed 003; BRIEF sec. 4): a series read as patch tokens
(language) and as one line chart per variate (vision); variate selection; a
forecasting head. Stage 1 forecasts the next ``pred_len`` composites.

Flags from the seed's ablation matrix: ``use_vision``, ``use_language``
(``align`` lives in the criterion). Without the language branch the forecast
comes from the chart embeddings plus each window's axis range (min, max, last
value), which a drawn chart's axis labels would give; the chart itself is
min-max normalised and carries no level.
"""
import torch
import torch.nn as nn

from models.timesclip.encoders import LanguageEncoder, VisionEncoder, n_patches


class VariateSelection(nn.Module):
    """Each variate's language CLS attends over the whole-series variate
    tokens (vision embeddings when the vision branch is on) and the result
    replaces that variate's last patch token (TimesCLIP)."""

    def __init__(self, d_model, n_heads=4):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, cls, context):
        # cls [B, V, D] queries, context [B, V, D] keys/values.
        sel, _ = self.attn(self.norm(cls), context, context)
        return cls + sel                                            # [B, V, D]


class TimesCLIP(nn.Module):
    def __init__(self, n_variates=7, input_len=18, pred_len=18, d_model=128, patch_length=6,
                 stride=3, n_layers=2, n_heads=4, dropout=0.1, use_vision=True, use_language=True,
                 image_size=64, line_width=1.5, vision_patch=8, vision_width=128, vision_layers=2,
                 embed_dim=128, vision=None, language=None):
        """``vision`` / ``language``: the model.vision / model.language tower
        sections (pretrained null: the bodies from scratch)."""
        super().__init__()
        if not (use_vision or use_language):
            raise ValueError("TimesCLIP: use_vision and use_language are both off; need at least one")
        self.input_len, self.pred_len, self.n_variates = input_len, pred_len, n_variates
        self.use_vision, self.use_language = use_vision, use_language
        m = n_patches(input_len, patch_length, stride)
        if use_language:
            self.language = LanguageEncoder(n_variates, m, patch_length, stride, d_model,
                                            n_layers, n_heads, dropout, language)
            self.language_proj = nn.Linear(d_model, embed_dim)
            self.select = VariateSelection(d_model, n_heads)
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(m * d_model, pred_len))
        if use_vision:
            self.vision = VisionEncoder(d_model, image_size, line_width, vision_patch, vision_width,
                                        vision_layers, n_heads, vision)
            self.vision_proj = nn.Linear(d_model, embed_dim)
            if not use_language:
                self.head = nn.Sequential(nn.Linear(d_model + 3, d_model), nn.GELU(),
                                          nn.Linear(d_model, pred_len))
        self.feature_dim = d_model

    def set_grad_checkpointing(self, enable=True):
        """--grad-checkpointing: the chart and language bodies' blocks (a frozen
        chart tower has no activations to save: its features come from the cache)."""
        for branch in ("vision", "language"):
            if hasattr(self, branch):
                getattr(self, branch).set_grad_checkpointing(enable)

    def encode(self, x, keys=None):
        """x [B, T, V] -> dict: ``tokens`` [B, V, M, D] after variate
        selection (language), ``variates`` [B, V, D] per-variate embedding,
        ``vision`` / ``language`` [B, V, embed_dim] for alignment. ``keys``:
        host-side names of the B series (the frozen chart cache's keys)."""
        out = {}
        vis = self.vision(x, keys) if self.use_vision else None    # [B, V, D]
        if self.use_language:
            tok = self.language(x)                                  # [B, V, 1+M, D]
            cls, patches = tok[:, :, 0], tok[:, :, 1:]
            sel = self.select(cls, vis if vis is not None else cls)
            patches = torch.cat([patches[:, :, :-1], sel.unsqueeze(2)], 2)  # [B, V, M, D]
            out["tokens"], out["variates"] = patches, sel
            out["language"] = self.language_proj(cls)
        else:
            out["variates"] = vis
        if vis is not None:
            out["vision"] = self.vision_proj(vis)
        return out

    def forecast_from(self, enc, x):
        b, t, v = x.shape
        if self.use_language:
            y = self.head(enc["tokens"].flatten(2))                 # [B, V, P]
        else:
            axis = torch.stack([x.min(1).values, x.max(1).values, x[:, -1]], -1)  # [B, V, 3]
            y = self.head(torch.cat([enc["variates"], axis], -1))
        return y.transpose(1, 2)                                    # [B, P, V]

    def forward(self, batch):
        x = batch["x"] if isinstance(batch, dict) else batch        # [B, T_in, V]
        enc = self.encode(x, batch.get("key") if isinstance(batch, dict) else None)
        out = {"forecast": self.forecast_from(enc, x)}
        for k in ("vision", "language"):
            if k in enc:
                out[k] = enc[k]
        return out


def legacy_tower_keys(m):
    """A model section saved before the tower sections (issue 11) -- a
    checkpoint's config -- in today's keys: vision_backbone / freeze_vision ->
    model.vision, language_backbone -> model.language."""
    m = dict(m)
    if not {"vision_backbone", "freeze_vision", "language_backbone"} & set(m):
        return m
    vision, language = dict(m.get("vision") or {}), dict(m.get("language") or {})
    backbone = m.pop("vision_backbone", "vit")
    vision.setdefault("pretrained", None if backbone == "vit" else backbone)
    vision.setdefault("freeze", bool(m.pop("freeze_vision", False)))
    body = m.pop("language_backbone", "scratch")
    language.setdefault("pretrained", {"scratch": None, "minilm": "all-MiniLM-L6-v2"}.get(body, body))
    m.pop("freeze_vision", None)
    m["vision"], m["language"] = vision, language
    return m


def build_timesclip(model_cfg, data_cfg):
    m = legacy_tower_keys(model_cfg)
    return TimesCLIP(n_variates=len(data_cfg["bands"]), input_len=data_cfg["input_len"],
                     pred_len=data_cfg["pred_len"], **m)
