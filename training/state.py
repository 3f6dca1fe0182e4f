"""What survives a restart, and what a resumed run may change.

A checkpoint is ``{name: obj.state_dict()}`` over named objects (model,
criterion, optimizer, scheduler, scaler, sampler, train_state) plus the
run's ``config`` and ``git_commit``; ``save_state`` / ``restore_state`` are
the whole contract, used by stage 1, stage 2 and ``eval.py`` alike.

The random streams are not stored: every micro-batch reseeds torch, numpy
and random from (run seed, index of its global batch, its slice of that
batch) (``seed_micro_batch``), so a resumed run draws what the uninterrupted
run drew, on any number of ranks whose micro-batches have the same size.
Per-item randomness in datasets comes from ``training.data.item_rng``.

Resume policy: the checkpoint fixes everything that defines the model and
its training (``model.*``, ``data.*``, ``loss.*``, the optimizer and
schedule keys, the seed, the global batch); its values are used. The command
line may change only ``RESUME_MAY_CHANGE`` (schedule length, logging,
cadence, resources). A fixed key given on the command line with another
value is an error; one that differs only in the config file is reported
and the checkpoint's value is used.
"""
import copy
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from training.config import ConfigError, is_map

# Keys a resumed run may take from its command line (prefixes end with '.').
RESUME_MAY_CHANGE = (
    "epochs", "max_steps",                                  # schedule length
    "log_every", "save_every", "val_every", "keep_last", "keep_best",
    "workers", "threads", "pin_memory", "prefetch_factor", "data.gen_workers",  # resources
    "device", "dist_backend", "precision", "grad_checkpointing", "torchcompile",
    "torchcompile_backend", "ddp_find_unused",
    "batch_size", "accum_freq",     # per rank; the sampler checks the global batch
    "max_nonfinite", "resume", "logs", "name", "config", "preset", "eval.", "stage2.",
)


@dataclass
class TrainState:
    """The loop's counters. ``batch_in_epoch``: optimizer steps done in
    ``epoch`` (the data position, with the sampler's order)."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0

    def state_dict(self):
        return asdict(self)

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, int(v))


def save_state(objects, **extra):
    """``{name: obj.state_dict()}`` plus ``extra`` (config, git_commit, ...)."""
    state = {name: obj.state_dict() for name, obj in objects.items()}
    state.update(extra)
    return state


def restore_state(objects, state, where="checkpoint"):
    """Load ``state[name]`` into every named object; a missing entry is an error
    (a checkpoint written before this contract, or by another program)."""
    missing = [name for name in objects if name not in state]
    if missing:
        raise ConfigError(f"{where}: no {', '.join(missing)} entry (keys: {sorted(state)}); "
                          f"expected a checkpoint written by train_stage1.py/train_stage2.py")
    for name, obj in objects.items():
        if isinstance(obj, torch.amp.GradScaler) and not state[name]:
            continue  # written by a run without fp16: a fresh scaler is the same thing
        obj.load_state_dict(state[name])


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seed_micro_batch(seed, batch_index, slice_index):
    """Reseed every stream for micro-batch ``slice_index`` (rank * accum_freq +
    micro index) of global batch ``batch_index`` (epoch * steps per epoch +
    step in the epoch: the data position, skipped steps included)."""
    seed_everything(int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(batch_index),
                                                int(slice_index)]).generate_state(1)[0]))


def _flat(d, path=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not is_map(k, v):
            out.update(_flat(v, f"{path}{k}."))
        else:
            out[f"{path}{k}"] = v
    return out


def _unset(v):
    return v is None or v == "auto"


def resume_config(saved, current, cli, may_change=RESUME_MAY_CHANGE):
    """The resumed run's config: ``saved`` (the checkpoint's) with the keys of
    ``may_change`` taken from ``current``. ``cli``: the dotted keys the
    command line set. A key the checkpoint does not have (added to the code
    since) takes its current value. Returns (config, lines to print); raises
    ConfigError when the command line sets a fixed key to another value."""
    def _may_change(key):
        return any(key == k or (k.endswith(".") and key.startswith(k)) for k in may_change)

    old, new = _flat(saved), _flat(current)
    refused, ignored, changed, added = [], [], [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key not in old:
            added.append(f"{key} {b!r}")
            continue
        if _may_change(key):
            if not _unset(b) or key in cli:
                changed.append(f"{key} {a!r} -> {b!r}")
            continue
        given = any(key == c or key.startswith(c + ".") for c in cli)
        (refused if given else ignored).append(f"{key} (checkpoint {a!r}, now {b!r})")
    if refused:
        raise ConfigError("resume: the checkpoint fixes " + "; ".join(refused)
                          + ". Drop these flags, or start a new run with another --name")
    merged = copy.deepcopy(saved)
    for key, value in new.items():
        if _may_change(key) or key not in old:
            _put(merged, key, value)
    lines = []
    if changed:
        lines.append("resume: the command line changes " + "; ".join(changed))
    if added:
        lines.append("resume: keys the checkpoint predates take their current values: "
                     + "; ".join(added))
    if ignored:
        lines.append("resume: the config file differs from the checkpoint in " + "; ".join(ignored)
                     + "; the checkpoint's values are used")
    return merged, lines


def _put(cfg, dotted, value):
    parts = dotted.split(".")
    cur = cfg
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            return
    cur[parts[-1]] = value
