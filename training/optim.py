"""AdamW with parameter groups and a cosine schedule with linear warm-up."""
import math

import torch

from models.towers.trainable import NO_DECAY_NAMES, tower_lr_mults


def _no_decay(name, p):
    # Norms, biases, embeddings' 1-D params and the logit scale/bias get no decay.
    return p.ndim < 2 or "logit_scale" in name or "logit_bias" in name or "norm" in name.lower()


def param_groups(named_modules, cfg):
    """Groups by (lr multiplier, decay). ``named_modules``: {prefix: module}.

    ``cfg["lr_multipliers"]`` maps a parameter-name prefix (e.g. ``model.text``)
    to a multiplier of ``cfg["lr"]`` (seed 001 sec. 4.5: the text tower at lr/2);
    the longest matching prefix wins.
    """
    mults = cfg.get("lr_multipliers") or {}
    towers = tower_lr_mults(named_modules)  # pretrained towers: lr_mult x layer_decay^(L+1-layer)
    groups = {}
    for prefix, module in named_modules.items():
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            full = f"{prefix}.{name}"
            match = max((k for k in mults if full.startswith(k)), key=len, default=None)
            mult = (float(mults[match]) if match else 1.0) * towers.get(full, 1.0)
            # a pretrained tower's class/mask tokens and positions: no decay (timm)
            decay = not _no_decay(name, p) and not (
                full in towers and any(k in name for k in NO_DECAY_NAMES))
            key = (mult, decay)
            if key not in groups:
                groups[key] = {"params": [], "names": [], "lr_mult": mult,
                               "weight_decay": cfg["wd"] if decay else 0.0}
            groups[key]["params"].append(p)
            groups[key]["names"].append(full)
    for k in mults:
        if not any(n.startswith(k) for g in groups.values() for n in g["names"]):
            raise ValueError(f"lr_multipliers: prefix {k!r} matches no trainable parameter")
    return list(groups.values())


def build_optimizer(named_modules, cfg):
    groups = param_groups(named_modules, cfg)
    for g in groups:
        g["lr"] = cfg["lr"] * g["lr_mult"]
    names = [g.pop("names") for g in groups]
    opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                            eps=cfg["eps"])
    return opt, names


def cosine_lambda(warmup, total, min_ratio=0.0):
    def f(step):
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def build_scheduler(optimizer, cfg, total_steps):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_lambda(cfg["warmup"], total_steps, cfg.get("min_lr_ratio", 0.0)))


def sync_lr(scheduler):
    """Set every group's lr to the schedule's value at its current step. After a
    resume with another schedule length (``--max-steps``/``--epochs``), the
    optimizer's saved lr is the old schedule's (0 at the end of a cosine), and
    the first resumed step would use it."""
    step = scheduler.last_epoch
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                               scheduler.lr_lambdas):
        group["lr"] = base * fn(step)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
