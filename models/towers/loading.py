"""Pretrained towers: one config schema for every tower section, and loading
with transformers from a local directory or a hub id already in the local
Hugging Face cache (never downloaded).

Every tower section (``model.radar``, ``model.audio``, ``model.vision``,
``model.language``, ``model.text``) carries the same five keys, so
``--model.vision.pretrained DIR --model.vision.freeze true`` means the same in
every family:

  pretrained       null: the family's from-scratch tower (for text: the bundled
                   all-MiniLM-L6-v2); else a local model folder or a cached hub id
  freeze           the pretrained weights do not train (kept in eval mode)
  unfreeze_last_n  with freeze: the last N blocks (and the final norm) train
                   (open_clip's --lock-image-unlocked-groups)
  layer_decay      block i of L gets lr * decay^(L - i), the embeddings
                   decay^(L + 1), the final norm/pooler 1 (BEiT / open_clip)
  lr_mult          multiplier of the pretrained weights' lr; new layers keep 1
                   (LAION-CLAP's --lr-pretrained / --lr-new)
"""
import json
import os

from huggingface_hub import snapshot_download
from transformers import (ASTModel, AutoModel, ClapModel, ClapAudioModel, ClapTextModel,
                          CLIPTextModel, CLIPVisionModel, ViTModel)
from transformers.utils import logging as hf_logging

from models.text_encoder import BUNDLED_NAMES, resolve_model_path

TOWER_DEFAULTS = {"pretrained": None, "freeze": False, "unfreeze_last_n": 0, "layer_decay": 1.0,
                  "lr_mult": 1.0}

# model_type in config.json -> (class to load, attribute holding the tower or
# None). CLIPVisionModel / CLIPTextModel read their half of a full CLIP folder;
# ClapAudioModel.from_pretrained on a ClapModel folder loads none of its
# weights and says nothing, so a clap folder is loaded whole and the tower
# taken from it.
VISION_TYPES = {"clip": (CLIPVisionModel, None), "clip_vision_model": (CLIPVisionModel, None),
                "vit": (ViTModel, None)}
AUDIO_TYPES = {"clap": (ClapModel, "audio_model"), "clap_audio_model": (ClapAudioModel, None),
               "audio-spectrogram-transformer": (ASTModel, None)}
TEXT_TYPES = {"clip": (CLIPTextModel, None), "clip_text_model": (CLIPTextModel, None),
              "clap": (ClapModel, "text_model"), "clap_text_model": (ClapTextModel, None)}


def tower_config(section, key="model.tower"):
    """The five tower keys of a config section (defaults filled in), checked.
    Other keys of the section (a family's own) are left to the family."""
    section = section or {}
    cfg = {k: section.get(k, v) for k, v in TOWER_DEFAULTS.items()}
    if cfg["pretrained"] is not None and not isinstance(cfg["pretrained"], str):
        raise ValueError(f"{key}.pretrained: expected null or a model folder / hub id, "
                         f"got {cfg['pretrained']!r}")
    if not isinstance(cfg["freeze"], bool):
        raise ValueError(f"{key}.freeze: expected true or false, got {cfg['freeze']!r}")
    n = cfg["unfreeze_last_n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{key}.unfreeze_last_n: expected an integer >= 0, got {n!r}")
    if n and not cfg["freeze"]:
        raise ValueError(f"{key}.unfreeze_last_n={n} needs {key}.freeze: true "
                         "(without freeze every block trains)")
    d = cfg["layer_decay"]
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1:
        raise ValueError(f"{key}.layer_decay: expected a number in (0, 1], got {d!r}")
    m = cfg["lr_mult"]
    if isinstance(m, bool) or not isinstance(m, (int, float)) or m < 0:
        raise ValueError(f"{key}.lr_mult: expected a number >= 0, got {m!r}")
    cfg["layer_decay"], cfg["lr_mult"] = float(d), float(m)
    return cfg


def resolve_pretrained(pretrained, key="model.tower.pretrained", bundled_text=False):
    """A local model folder for ``pretrained``: a directory, or a hub id already
    in the local cache. ``bundled_text``: null means the bundled MiniLM."""
    if pretrained is None:
        if bundled_text:
            return resolve_model_path(None)
        raise FileNotFoundError(f"{key}: null has no pretrained checkpoint")
    if pretrained in BUNDLED_NAMES:   # "all-MiniLM-L6-v2", "bundled": the packaged copy
        return resolve_model_path(pretrained)
    if os.path.isdir(pretrained):
        if not os.path.isfile(os.path.join(pretrained, "config.json")):
            raise FileNotFoundError(f"{key}: {pretrained!r} has no config.json (expected a "
                                    "Hugging Face model folder written by save_pretrained)")
        return pretrained
    # "org/name" or a legacy "name" may be hub ids; anything else is a path
    if pretrained.startswith((".", "/", "~")) or pretrained.count("/") > 1:
        raise FileNotFoundError(f"{key}: no such directory {pretrained!r}")
    try:  # a hub id: usable only if it is already in the local cache
        return snapshot_download(pretrained, local_files_only=True)
    except Exception as e:
        raise FileNotFoundError(
            f"{key}: {pretrained!r} is not a local directory and not in the local Hugging Face "
            "cache; this code never downloads. On a machine with internet: "
            f"transformers.AutoModel.from_pretrained({pretrained!r}).save_pretrained(DIR), "
            "then pass DIR.") from e


def read_model_type(path):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    return cfg.get("model_type"), cfg.get("architectures")


def read_preprocessor_config(path):
    """preprocessor_config.json of a model folder as a dict ({} if absent)."""
    p = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(p):
        return {}
    with open(p) as f:
        return json.load(f)


def load_tower(pretrained, expected, key="model.tower.pretrained", bundled_text=False):
    """(model, path): the tower of a checkpoint whose config.json model_type is
    one of ``expected`` ({model_type: (class, attribute)}; None: any AutoModel).
    Raises FileNotFoundError (nothing there) or ValueError (another model)."""
    path = resolve_pretrained(pretrained, key, bundled_text)
    model_type, archs = read_model_type(path)
    if expected is not None and model_type not in expected:
        raise ValueError(f"{key}: {path!r} holds a model of type {model_type!r} (architectures "
                         f"{archs}); expected one of {sorted(expected)}")
    cls, attr = expected[model_type] if expected is not None else (AutoModel, None)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # a tower's unused heads are expected
    hf_logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    n_params = len(model.state_dict())
    missing = info.get("missing_keys") or []
    if len(missing) > n_params // 2:  # a class that does not match the saved names
        raise ValueError(f"{key}: {path!r} ({model_type}) loaded into {cls.__name__} leaves "
                         f"{len(missing)} of {n_params} weights uninitialised "
                         f"(e.g. {sorted(missing)[:3]})")
    if attr is not None:
        model = getattr(model, attr)
    return model, path


def check_scratch_tower(settings, key):
    """A from-scratch tower (``pretrained: null``) has no pretrained blocks: the
    tower keys that only mean something for a checkpoint are refused by name."""
    for k in ("unfreeze_last_n", "layer_decay", "lr_mult"):
        if settings[k] != TOWER_DEFAULTS[k]:
            raise ValueError(f"{key}.{k}={settings[k]!r} needs {key}.pretrained (a checkpoint "
                             "folder); the from-scratch tower has no pretrained blocks "
                             "(lr_multipliers sets its learning rate)")
