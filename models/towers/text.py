"""The text tower of a CLIP or CLAP checkpoint (CLIPTextModel, ClapTextModel),
or any transformers AutoModel; null = the bundled all-MiniLM-L6-v2. Output
is models/text_encoder.py's TextOutput (projected pooled and token features,
mask, the fast tokenizer's character offsets), so a family can swap it in.

After the backbone, both run the same text side (models/text_head.py): the
optional order-aware head over the token states (``head_layers``, ``head_heads``,
``head_dim``) and token dropout in training (``token_dropout``); both off by default.

``encode_embeds`` runs the same body on embeddings made elsewhere (TimesCLIP's
language branch: a linear patch tokenizer in place of the token embedding).
"""
import torch.nn as nn
from transformers import AutoTokenizer, CLIPTextModel
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from models.text_encoder import TextEncoder, TextOutput
from models.text_head import (OrderHead, drop_tokens, pool_tokens, set_backbone_dropout,
                              text_side_config)
from models.towers.loading import (TEXT_TYPES, load_tower, read_model_type, resolve_pretrained,
                                   tower_config)
from models.towers.trainable import Tower

NOT_TEXT = ("vit", "clip_vision_model", "clap_audio_model", "audio-spectrogram-transformer")


class TextTower(Tower):
    def __init__(self, settings, key="model.text", embed_dim=256, max_length=77, pooling=None,
                 side=None):
        settings = dict(settings or {})
        path = resolve_pretrained(settings.get("pretrained"), key + ".pretrained", bundled_text=True)
        model_type, archs = read_model_type(path)
        if model_type in NOT_TEXT:
            raise ValueError(f"{key}.pretrained: {path!r} holds a model of type {model_type!r} "
                             f"(architectures {archs}), which has no text tower; expected clip, "
                             "clap or a text model")
        backbone, path = load_tower(path, TEXT_TYPES if model_type in TEXT_TYPES else None,
                                    key + ".pretrained")
        # The checkpoint's own pooling: CLIP's end-of-text token, CLAP's
        # (RoBERTa) pooler; a sentence encoder's mean otherwise.
        pooling = pooling or ("pooler" if model_type in TEXT_TYPES else "mean")
        if pooling not in ("cls", "mean", "pooler", "max"):
            raise ValueError(f"{key}.pooling: cls, mean, pooler or max, got {pooling!r}")
        unused = ("pooler.",) if pooling != "pooler" and getattr(backbone, "pooler", None) else ()
        super().__init__(backbone, settings, key, unused)
        self.pooling, self.source = pooling, path
        self.tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        if not self.tokenizer.is_fast:
            raise ValueError(f"{key}.pretrained: {path!r} has no fast tokenizer (tokenizer.json); "
                             "span offsets need one")
        cfg = backbone.config
        limit = getattr(cfg, "max_position_embeddings", max_length)
        if model_type in ("clap", "clap_text_model", "roberta"):
            limit -= 2   # RoBERTa positions start after the padding index
        self.max_length = min(max_length, limit)
        self.hidden_size = cfg.hidden_size
        self.proj = nn.Linear(self.hidden_size, embed_dim)
        side = text_side_config(side, key)
        set_backbone_dropout(self.backbone, side["dropout"])
        if side["head_layers"] and pooling == "pooler":
            raise ValueError(f"{key}.head_layers needs {key}.pooling_strategy cls, mean or max "
                             f"(this checkpoint's default is its pooler, which reads the "
                             "backbone's output, not the head's)")
        # new layers: outside ``backbone``, so at lr multiplier 1 (Tower.lr_mults)
        self.head = OrderHead(self.hidden_size, side["head_layers"], side["head_heads"],
                              side["head_dim"], self.max_length, key) if side["head_layers"] else None
        self.token_dropout = side["token_dropout"]
        if side.get("state_noise", 0.0) > 0:
            raise ValueError(f"{key}.state_noise: needs the plain text model's cached prefix "
                             f"(TextEncoder with unfreeze_last_n > 0); this tower encodes every batch")

    def tokenize(self, captions):
        return self.tokenizer(list(captions), padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt",
                              return_offsets_mapping=True)

    def forward(self, captions):
        device = self.proj.weight.device
        tok = self.tokenize(captions)
        inputs = {k: v.to(device) for k, v in tok.items() if k != "offset_mapping"}
        out = self.backbone(**inputs)
        hidden = out.last_hidden_state                                  # [B, L, H]
        mask = inputs["attention_mask"].bool()                           # [B, L]
        offsets = tok["offset_mapping"].to(device)                      # [B, L, 2]
        if self.training and self.token_dropout > 0:
            mask = drop_tokens(mask, offsets, self.token_dropout)
        if self.head is not None:
            hidden = self.head(hidden, mask)
        pooled = pool_tokens(hidden, mask, self.pooling,
                             out.pooler_output if self.pooling == "pooler" else None)
        return TextOutput(features=self.proj(pooled), tokens=self.proj(hidden), mask=mask,
                          offsets=offsets, input_ids=inputs["input_ids"])

    def encode_embeds(self, embeds, mask=None, causal=None):
        """The body over ``embeds`` [B, L, H] (positions added here, as for
        tokens) -> hidden [B, L, H]. CLIP's text transformer is causal by
        training; ``causal=False`` lets every token see every other."""
        m = self.backbone
        if not isinstance(m, CLIPTextModel):
            return m(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        causal = True if causal is None else causal
        pos = m.embeddings.position_embedding(m.embeddings.position_ids[:, :embeds.shape[1]])
        x = embeds + pos
        make = create_causal_mask if causal else create_bidirectional_mask
        kw = {"cache": None} if causal else {}
        attn = make(config=m.config, inputs_embeds=x, attention_mask=mask, **kw)
        x = m.encoder(inputs_embeds=x, attention_mask=attn, is_causal=causal).last_hidden_state
        return m.final_layer_norm(x)


def build_text_encoder(section, key="model.text", embed_dim=256):
    """The text tower a ``model.text`` section asks for. Plain text models
    (null = the bundled MiniLM, or any AutoModel folder) with no layer decay and
    no lr multiplier stay on TextEncoder, whose frozen-caption cache and numbers
    are today's; a CLIP / CLAP checkpoint or layer_decay / lr_mult gives a
    TextTower. Family keys: max_length, pooling_strategy, the text side's
    head_layers, head_heads, head_dim, token_dropout (both towers; absent:
    off), and for TextEncoder cache_features, cache_max_mb."""
    section = dict(section or {})
    t = tower_config(section, key)
    side = text_side_config(section, key)
    path = resolve_pretrained(t["pretrained"], key + ".pretrained", bundled_text=True)
    plain = read_model_type(path)[0] not in TEXT_TYPES
    if plain and t["layer_decay"] == 1.0 and t["lr_mult"] == 1.0:
        extra = {k: section[k] for k in ("max_length", "pooling_strategy", "cache_features",
                                         "cache_max_mb") if k in section}
        return TextEncoder(model_name=t["pretrained"], embed_dim=embed_dim,
                           freeze_backbone=t["freeze"], unfreeze_last_n=t["unfreeze_last_n"],
                           **extra, **side)
    return TextTower(t, key, embed_dim, section.get("max_length", 77),
                     section.get("pooling_strategy"), side)
