"""What the text side adds after the (frozen, cached) backbone (issue 13):
an order-aware head over its token states, and token dropout.

A frozen sentence encoder's mean-pooled vector barely moves when two actions
of a caption swap places: every token is still there, and the mean does not
see where. ``OrderHead`` is a few small pre-norm Transformer layers over the
backbone's token states with learned positions of their own, added back as a
residual through a zero-initialised output projection: a new head is the
identity (the encoder's numbers at step 0 are the headless ones) and learns
to write order into the tokens the pooling then averages. It runs after the
backbone, so the caption caches stay valid and only the head trains.

``drop_tokens`` is a word dropout that needs no re-encoding: whole content
tokens leave the mask (pooling, the head's attention and the token-level
similarity then skip them), the cached states stay as they are.
"""
import torch
import torch.nn as nn

# model.text keys of the text side; these defaults are the behaviour from
# before they existed (no head, no dropout), also for older checkpoints
TEXT_SIDE_DEFAULTS = {"head_layers": 0, "head_heads": 4, "head_dim": None, "token_dropout": 0.0,
                      "dropout": None, "state_noise": 0.0}


def text_side_config(section, key="model.text"):
    """The text-side keys of a model.text section, defaults filled in, checked."""
    section = section or {}
    cfg = {k: section.get(k, v) for k, v in TEXT_SIDE_DEFAULTS.items()}
    for k in ("head_layers", "head_heads"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "head_layers" else 1):
            raise ValueError(f"{key}.{k}: expected an integer >= {0 if k == 'head_layers' else 1}, "
                             f"got {v!r}")
    d = cfg["head_dim"]
    if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
        raise ValueError(f"{key}.head_dim: expected null (the backbone's hidden size) or an "
                         f"integer >= 1, got {d!r}")
    p = cfg["token_dropout"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"{key}.token_dropout: expected a probability in [0, 1), got {p!r}")
    cfg["token_dropout"] = float(p)
    p = cfg["dropout"]
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1):
        raise ValueError(f"{key}.dropout: expected null (the checkpoint's own) or a probability "
                         f"in [0, 1), got {p!r}")
    cfg["dropout"] = None if p is None else float(p)
    p = cfg["state_noise"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0:
        raise ValueError(f"{key}.state_noise: expected a number >= 0 (0: off), got {p!r}")
    cfg["state_noise"] = float(p)
    return cfg


def set_backbone_dropout(backbone, p):
    """Every dropout of a transformers backbone at probability ``p`` (hidden
    states and attention weights: BERT's attention reads its Dropout's p);
    None leaves the checkpoint's own. Only layers that train ever apply it
    (frozen ones run in eval mode)."""
    if p is None:
        return
    for m in backbone.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def content_tokens(mask, offsets):
    """Tokens with a span in the caption: [CLS], [SEP], <|endoftext|> and
    padding have offsets (0, 0). mask [B, L] bool, offsets [B, L, 2]."""
    return mask & (offsets[..., 1] > offsets[..., 0])


def drop_tokens(mask, offsets, p):
    """``mask`` [B, L] with each content token dropped with probability ``p``;
    special tokens always stay. A caption whose every content token would go
    keeps them all (an empty caption would have nothing to align)."""
    content = content_tokens(mask, offsets)
    drop = content & (torch.rand(mask.shape, device=mask.device) < p)   # [B, L]
    drop &= (content & ~drop).any(1, keepdim=True)
    return mask & ~drop


def pool_tokens(hidden, mask, strategy, pooled=None):
    """hidden [B, L, H], mask [B, L] -> [B, H]; ``pooled`` is the backbone's
    own (strategy ``pooler``)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if strategy == "cls":
        pooled = hidden[:, 0]
    elif strategy == "mean":
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    elif strategy == "max":
        pooled = hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values
    return pooled


class OrderHead(nn.Module):
    """hidden [B, L, H] -> hidden + out(layers(in(hidden) + positions)) [B, L, H].

    ``width`` (null: H) is the head's own size; in/out are linear maps
    between it and H (identity in when equal). ``out`` starts at zero."""

    def __init__(self, hidden_size, num_layers, num_heads=4, width=None, max_length=77,
                 key="model.text"):
        super().__init__()
        width = width or hidden_size
        if width % num_heads:
            raise ValueError(f"{key}.head_heads={num_heads} does not divide the head's width "
                             f"{width} ({key}.head_dim, null: the backbone's hidden size)")
        self.inp = nn.Identity() if width == hidden_size else nn.Linear(hidden_size, width)
        self.pos = nn.Parameter(torch.zeros(max_length, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, num_heads, 4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, hidden_size)
        nn.init.zeros_(self.out.weight)   # a new head is the identity
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden, mask):
        L = hidden.shape[1]
        if L > self.pos.shape[0]:
            raise ValueError(f"text head: {L} tokens but positions for {self.pos.shape[0]} "
                             "(model.text.max_length)")
        x = self.inp(hidden) + self.pos[:L]                 # [B, L, W]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        return hidden + self.out(self.norm(x))              # [B, L, H]
