"""One config dict per run: training defaults < family YAML < preset < CLI.

Keys are the YAML's; nested keys are addressed with dots on the command line
(``--model.embed_dim 128``), dashes and underscores are interchangeable
(``--batch-size 32``). A key that exists nowhere is refused by name.
"""
import copy
import difflib
import os
import re

import yaml

# Training keys every family shares (open_clip's flag names where they exist).
TRAIN_DEFAULTS = {
    "family": None,
    "name": None,            # run name: logs/<name>/
    "logs": "logs",
    "seed": 0,
    "device": "auto",        # auto | cpu | cuda
    "threads": None,         # torch intra-op threads (None: torch's default); 1 helps on busy CPUs
    "dist_backend": "auto",  # auto: nccl on CUDA, gloo on CPU
    "batch_size": 64,        # per rank, per optimizer step (after accumulation)
    "accum_freq": 1,         # micro-batches per step; micro-batch = batch_size / accum_freq
    "epochs": 10,
    "max_steps": None,       # stop after this many optimizer steps
    "lr": 1.0e-4,
    "lr_multipliers": {},    # {module_prefix: multiplier}, seed 001 sec. 4.5
    "wd": 0.01,
    "beta1": 0.9,
    "beta2": 0.98,
    "eps": 1.0e-6,
    "warmup": 100,           # optimizer steps of linear warm-up
    "min_lr_ratio": 0.0,     # cosine floor as a share of lr
    "precision": "fp32",     # fp32 | amp (fp16 + GradScaler) | amp_bf16
    "grad_clip_norm": None,
    "grad_checkpointing": False,
    "local_loss": False,
    "gather_with_grad": False,
    "ddp_find_unused": False,  # DDP find_unused_parameters, for models with optional branches
    "workers": 2,
    "pin_memory": True,
    "prefetch_factor": 2,
    "log_every": 10,         # steps between TensorBoard scalars
    "save_every": 200,       # steps between checkpoints (0: only at epoch end)
    "keep_last": 2,
    "keep_best": 3,
    "val_every": 1,          # epochs between validations (0: never)
    "monitor": "val/loss",   # metric that ranks the best-K checkpoints
    "monitor_mode": "min",   # min | max
    "max_nonfinite": 5,      # stop after this many non-finite steps in a row
    "resume": None,          # latest | PATH
}

_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
FAMILY_SECTIONS = ("data", "model", "loss", "eval", "stage2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(ValueError):
    """A config key, value or file that is not what the run expects."""


def _merge(base, override, where, path=""):
    for key, value in override.items():
        full = f"{path}{key}"
        if key not in base:
            close = difflib.get_close_matches(full, list(_flat_keys(base, path)), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{where}: unknown config key {full!r}{hint}")
        if isinstance(base[key], dict) and isinstance(value, dict) and base[key]:
            _merge(base[key], value, where, full + ".")
        elif (isinstance(base[key], (int, float)) and not isinstance(base[key], bool)
              and isinstance(value, str)):
            if not _SCI.fullmatch(value):  # 'lr: 1e-4' in YAML is a string; the key is numeric
                raise ConfigError(f"{where}: {full} expects a number, got {value!r}")
            base[key] = float(value)
        else:
            base[key] = copy.deepcopy(value)


def _flat_keys(d, path=""):
    for k, v in d.items():
        yield f"{path}{k}"
        if isinstance(v, dict):
            yield from _flat_keys(v, f"{path}{k}.")


def _set_dotted(cfg, dotted, value, where):
    nested = {}
    cur = nested
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    _merge(cfg, nested, where)


def _normalise(key):
    return key.lstrip("-").replace("-", "_")


def parse_cli(argv):
    """['--a', '1', '--b=x', '--flag'] -> [('a', 1), ('b', 'x'), ('flag', True)]."""
    pairs, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":  # torchrun ... train_stage1.py -- --logs DIR (see README)
            i += 1
            continue
        if not tok.startswith("--"):
            raise ConfigError(f"command line: expected --key [value], got {tok!r}")
        if "=" in tok:
            key, raw = tok.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, raw = tok, argv[i + 1]
            i += 2
        else:
            key, raw = tok, "true"
            i += 1
        pairs.append((_normalise(key), _parse_value(raw)))
    return pairs


def _parse_value(raw):
    if raw == "":
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _SCI.fullmatch(value):
        return float(value)  # YAML 1.1 reads '1e-4' as a string; a flag value like that is a number
    return value


def family_yaml(family):
    return os.path.join(REPO_ROOT, "configs", f"{family}.yaml")


def load_config(argv, defaults=None):
    """Resolve a run's config from the command line (sys.argv[1:])."""
    pairs = parse_cli(argv)
    opts = dict(pairs)
    family = opts.get("family")
    path = opts.get("config") or (family_yaml(family) if family else None)
    if path is None:
        raise ConfigError("command line: give --family NAME or --config FILE")
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found (field --config / --family)")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    presets = data.pop("presets", {}) or {}
    cfg = copy.deepcopy(defaults if defaults is not None else TRAIN_DEFAULTS)
    for sec in FAMILY_SECTIONS:
        cfg.setdefault(sec, {})
    _merge(cfg, data, path)
    if family is not None:
        cfg["family"] = family
    if not cfg.get("family"):
        raise ConfigError(f"{path}: field 'family' missing (or pass --family)")
    preset = opts.get("preset")
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"{path}: unknown preset {preset!r}; presets: {sorted(presets)}")
        for k, v in (presets[preset] or {}).items():
            _set_dotted(cfg, k, v, f"{path} preset {preset!r}")
    for key, value in pairs:
        if key in ("family", "config", "preset"):
            continue
        _set_dotted(cfg, key, value, "command line")
    cfg["preset"] = preset
    cfg["config"] = path
    return cfg


def dump(cfg, path):
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
