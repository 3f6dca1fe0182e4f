"""One config dict per run: training defaults < family YAML < preset < CLI.

Keys are the YAML's; nested keys are addressed with dots on the command line
(``--model.embed_dim 128``), dashes and underscores are interchangeable
(``--batch-size 32``). A key that exists nowhere is refused by name.

Typing is nanoGPT's: an override must have its default's type. An int key
refuses ``32.5`` and ``abc`` (an integral float such as ``1e4`` is taken as
10000); a float key takes ints; a bool key takes ``true``/``false`` only; a
string key takes strings (and ints, read as text: ``--name 2024``); a list
key takes lists. Keys whose default is ``None`` have their type in
``OPTIONAL_TYPES`` (``--max-steps abc`` is refused) or, in a family's YAML,
take any value.

A dict default is a *schema* (``model.text``: its keys are fixed and each is
typed) unless it is a *map*: a user's own keys and values, replaced as a
whole. A map is a dict that is empty by default (``data.sim: {}``), whose
key is named in ``MAP_KEYS`` (``lr_multipliers``) or ends in ``_kwargs``.

The family YAML defines its sections (``data``, ``model``, ``loss``,
``eval``, and the family's own ``stage2`` keys next to ``STAGE2_DEFAULTS``);
presets and the command line may only override keys that exist.
"""
import copy
import difflib
import os
import re

import yaml

# Stage 2 (train_stage2.py) reads these, not the stage-1 keys of the same name.
STAGE2_DEFAULTS = {
    "epochs": 20,
    "lr": 1.0e-3,
    "wd": 1.0e-4,
    "batch_size": 64,
    "mode": "linear",          # scratch | linear | finetune | frozen_then_finetune
    "encoder_lr_mult": 0.1,
    "frozen_epochs": 5,        # frozen_then_finetune: epochs with the encoder frozen
    "pct_start": 0.1,          # OneCycle warm-up share
    "weighted_sampling": False,
    "monitor": "loss",
    "monitor_mode": "min",
    "grad_clip_norm": 1.0,
}

# Training keys every family shares (open_clip's flag names where they exist).
TRAIN_DEFAULTS = {
    "family": None,
    "name": None,            # run name: logs/<name>/
    "logs": "logs",
    "seed": 0,
    "device": "auto",        # auto | cpu | cuda
    "threads": None,         # torch intra-op threads; None: training.resources' budget
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
    "precision": "auto",     # auto | fp32 | amp (fp16 + GradScaler) | amp_bf16
    "attention": "auto",     # auto | default | math: the attention kernel (training/precision.py)
    "grad_clip_norm": None,
    "grad_checkpointing": False,
    "torchcompile": False,   # torch.compile the model's towers (training/compile.py)
    "torchcompile_backend": "inductor",  # aot_eager: the same graphs, no code generation
    "local_loss": False,
    "gather_with_grad": False,
    "ddp_find_unused": False,  # DDP find_unused_parameters, for models with optional branches
    "workers": None,         # DataLoader workers per rank; None: training.resources' budget
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
    "stage2": STAGE2_DEFAULTS,
}

# Types of the training keys whose default is None (None stays allowed).
OPTIONAL_TYPES = {"family": str, "name": str, "threads": int, "max_steps": int,
                  "grad_clip_norm": float, "workers": int, "resume": str}
MAP_KEYS = {"lr_multipliers", "sim"}
FAMILY_SECTIONS = ("data", "model", "loss", "eval", "stage2")

_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(ValueError):
    """A config key, value or file that is not what the run expects."""


def is_map(key, default):
    return isinstance(default, dict) and (not default or key in MAP_KEYS
                                          or key.endswith("_kwargs"))


def _typed(full, default, value, where, declared=None):
    """``value`` checked against the type of ``default`` (or ``declared``)."""
    kind = declared or (type(default) if default is not None else None)
    if kind is None or (value is None and (default is None or declared)):
        return copy.deepcopy(value)
    if isinstance(value, str) and _SCI.fullmatch(value) and kind in (int, float):
        value = float(value)  # 'lr: 1e-4' in YAML 1.1 is a string; the key is numeric
    bad = None
    if kind is bool:
        if not isinstance(value, bool):
            bad = "true or false"
    elif kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            bad = "an integer"
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad = "a number"
        else:
            value = float(value)
    elif kind is str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            bad = "a string"
    elif kind is list:
        if not isinstance(value, (list, tuple)):
            bad = "a list like [a, b]"
        else:
            value = list(value)
    elif kind is dict:
        if not isinstance(value, dict):
            bad = "a mapping like {key: value}"
    if bad:
        raise ConfigError(f"{where}: {full} expects {bad} (its default is {default!r}), "
                          f"got {value!r}")
    return copy.deepcopy(value)


def _merge(base, override, where, path="", define=False):
    """Merge ``override`` into ``base`` in place. ``define``: inside the family
    sections new keys may be added (the family YAML defines them)."""
    if not isinstance(override, dict):
        raise ConfigError(f"{where}: {path.rstrip('.')} expects a mapping, got {override!r}")
    for key, value in override.items():
        full = f"{path}{key}"
        top = full.split(".")[0]
        if key not in base:
            if define and top in FAMILY_SECTIONS and path:
                base[key] = copy.deepcopy(value)
                continue
            close = difflib.get_close_matches(full, list(_flat_keys(base, path)), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{where}: unknown config key {full!r}{hint}")
        default = base[key]
        if isinstance(default, dict) and not is_map(key, default):
            _merge(default, value, where, full + ".", define)
        else:
            base[key] = _typed(full, default, value, where,
                               OPTIONAL_TYPES.get(full) if not path else None)


def _flat_keys(d, path=""):
    for k, v in d.items():
        yield f"{path}{k}"
        if isinstance(v, dict) and not is_map(k, v):
            yield from _flat_keys(v, f"{path}{k}.")


def set_dotted(cfg, dotted, value, where="command line"):
    """``set_dotted(cfg, "model.embed_dim", 128)``, typed like the default."""
    nested = {}
    cur = nested
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    _merge(cfg, nested, where)


_set_dotted = set_dotted  # the name other modules imported before


def get_dotted(cfg, dotted):
    cur = cfg
    for p in dotted.split("."):
        cur = cur[p]
    return cur


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


def cli_keys(argv):
    """The dotted keys a command line sets (e.g. {'epochs', 'model.embed_dim'})."""
    return {k for k, _ in parse_cli(argv)}


_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}


def _parse_value(raw):
    if raw == "":
        return None
    if raw.lower() in _YAML11_BOOLS:
        return raw  # a bool flag takes true/false only; 'yes' stays text
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
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
    _merge(cfg, data, path, define=True)
    if family is not None:
        cfg["family"] = family
    if not cfg.get("family"):
        raise ConfigError(f"{path}: field 'family' missing (or pass --family)")
    # keys the YAML leaves null stay nullable from the command line after a
    # preset gave them a value (``--model.text.dropout null`` after quick's 0.0)
    nullable = {k for k in _flat_keys(cfg) if get_dotted(cfg, k) is None}
    preset = opts.get("preset")
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"{path}: unknown preset {preset!r}; presets: {sorted(presets)}")
        for k, v in (presets[preset] or {}).items():
            set_dotted(cfg, k, v, f"{path} preset {preset!r}")
    for key, value in pairs:
        if key in ("family", "config", "preset"):
            continue
        if value is None and key in nullable:
            parent = get_dotted(cfg, key.rsplit(".", 1)[0]) if "." in key else cfg
            parent[key.rsplit(".", 1)[-1]] = None
            continue
        set_dotted(cfg, key, value, "command line")
    cfg["preset"] = preset
    cfg["config"] = path
    return cfg


def dump(cfg, path):
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
