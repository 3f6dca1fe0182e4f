"""What trains in a pretrained tower: freezing, the last N blocks, layer-wise
lr decay, the pretrained-vs-new lr multiplier, and a log line per tower.

A backbone's parameters get a layer id: 0 for the embeddings (everything
before the first block), 1..L for the blocks, L + 1 for what follows (final
norm, pooler). Freezing, unfreeze_last_n and layer decay all read it.
"""
from functools import partial

import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from models.towers.loading import tower_config


def backbone_blocks(model):
    """The repeated blocks of a transformers backbone, in order, each a list of
    modules (a Swin stage's patch merging goes with the stage's last block)."""
    enc = getattr(model, "audio_encoder", None)
    if enc is not None and hasattr(enc, "layers"):  # HTS-AT: Swin stages of blocks
        blocks = []
        for stage in enc.layers:
            blocks += [[b] for b in stage.blocks]
            if stage.downsample is not None:
                blocks[-1].append(stage.downsample)
        return blocks
    for path in ("encoder.layers", "encoder.layer", "layers", "layer", "h", "blocks"):
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, nn.ModuleList):
            return [[b] for b in mod]
    raise ValueError(f"{type(model).__name__}: no block list found "
                     "(looked for encoder.layers, encoder.layer, layers, layer, h, blocks)")


# Input normalisation registered after the blocks but applied before them.
EMBEDDING_NAMES = ("audio_encoder.batch_norm.",)


def param_layer_ids(model):
    """({parameter name: layer id}, number of blocks L)."""
    blocks = backbone_blocks(model)
    owner = {}
    for i, mods in enumerate(blocks):
        for m in mods:
            for p in m.parameters():
                owner[id(p)] = i + 1
    ids, seen_block = {}, False
    for name, p in model.named_parameters():
        if id(p) in owner:
            ids[name], seen_block = owner[id(p)], True
        elif name.startswith(EMBEDDING_NAMES) or not seen_block:
            ids[name] = 0
        else:
            ids[name] = len(blocks) + 1
    return ids, len(blocks)


def _maximal_frozen(module):
    """Submodules whose every parameter is frozen, outermost only (their
    parameter-free children, dropout included, go with them)."""
    out = []

    def walk(m):
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(m)
            return
        for c in m.children():
            walk(c)
    walk(module)
    return out


class Tower(nn.Module):
    """A pretrained transformers backbone (``self.backbone``) under the five
    tower keys. Subclasses add their modality's input and output handling;
    parameters outside ``backbone`` are new (lr multiplier 1)."""

    def __init__(self, backbone, settings=None, key="model.tower", unused=()):
        super().__init__()
        self.backbone = backbone
        self.key = key
        # name prefixes of backbone parts the tower's forward never reads (an
        # unused pooler): never trained, so DDP finds no parameter without a gradient
        self.unused = tuple(unused)
        self.settings = tower_config(settings, key)
        self.layer_ids, self.num_blocks = param_layer_ids(backbone)
        self.apply_trainable()

    def apply_trainable(self):
        """Freeze per ``settings``; call again after replacing backbone weights."""
        self.layer_ids, self.num_blocks = param_layer_ids(self.backbone)
        s, L = self.settings, self.num_blocks
        n = s["unfreeze_last_n"]
        if n > L:
            raise ValueError(f"{self.key}.unfreeze_last_n={n} but the model has {L} blocks")
        for name, p in self.backbone.named_parameters():
            trains = not s["freeze"] or (n > 0 and self.layer_ids[name] > L - n)
            p.requires_grad_(trains and not name.startswith(self.unused))
        # Kept out of train mode: frozen parts (no dropout, deterministic
        # features) and batch norms (features must not depend on the rest of
        # the micro-batch: the loop's accumulation recomputes them per slice;
        # the checkpoint's running statistics normalise instead).
        self._always_eval = _maximal_frozen(self.backbone) + [
            m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.train(self.training)

    @property
    def frozen(self):
        """No backbone weight trains."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode=True):
        super().train(mode)
        for m in getattr(self, "_always_eval", ()):
            m.eval()
        return self

    def set_grad_checkpointing(self, enable=True):
        """Activation checkpointing of the backbone's blocks (a frozen tower
        stores no activations for backward, so it has nothing to save)."""
        enable = enable and not self.frozen
        fn = partial(checkpoint, use_reentrant=False)
        for m in self.backbone.modules():
            if isinstance(m, GradientCheckpointingLayer):
                m.gradient_checkpointing, m._gradient_checkpointing_func = enable, fn

    def lr_mults(self):
        """{parameter name within this tower: lr multiplier} for the backbone's
        trainable parameters: lr_mult * layer_decay^(L + 1 - layer id)."""
        s, L = self.settings, self.num_blocks
        return {f"backbone.{n}": s["lr_mult"] * s["layer_decay"] ** (L + 1 - self.layer_ids[n])
                for n, p in self.backbone.named_parameters() if p.requires_grad}

    def summary(self, name):
        n_all = sum(p.numel() for p in self.parameters())
        n_train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        s = self.settings
        what = "trains" if not s["freeze"] else (
            f"frozen, last {s['unfreeze_last_n']}/{self.num_blocks} blocks train"
            if s["unfreeze_last_n"] else "frozen")
        source = s["pretrained"] or getattr(self, "source", "a model built in code")
        return (f"{name}: {type(self.backbone).__name__} from {source}, "
                f"{n_all / 1e6:.2f}M params, {n_train / 1e6:.2f}M trainable, "
                f"{(n_all - n_train) / 1e6:.2f}M frozen ({what}; layer_decay {s['layer_decay']:g}, "
                f"lr_mult {s['lr_mult']:g})")


def find_towers(named_modules):
    """{full name: Tower} inside ``named_modules`` ({prefix: module})."""
    return {f"{prefix}.{n}" if n else prefix: m
            for prefix, module in named_modules.items()
            for n, m in module.named_modules() if isinstance(m, Tower)}


def tower_lr_mults(named_modules):
    """{full parameter name: lr multiplier} for every tower's backbone
    parameters (the names ``training/optim.param_groups`` builds)."""
    return {f"{t}.{n}": mult for t, tower in find_towers(named_modules).items()
            for n, mult in tower.lr_mults().items()}


NO_DECAY_NAMES = ("cls_token", "class_embedding", "distillation_token", "mask_token",
                  "position_embedding")   # timm's no_weight_decay: tokens and positions


def tower_summary(named_modules):
    """One log line per tower: trainable / frozen parameter counts."""
    return [t.summary(name) for name, t in find_towers(named_modules).items()]
