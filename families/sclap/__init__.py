"""sCLAP family: spatial-temporal audio <-> text (seed 002, BRIEF sec. 3).

    python train_stage1.py --family sclap --preset quick
    python eval.py --checkpoint logs/<name>/checkpoints/latest.pt --out DIR

Data: generated stClotho-style triplets (data/sclap/generate.py), or your
own folder with ``--data.root DIR --data.generate false``: its layout (the
project's manifest, or T-SALM's stClotho folders) is found by looking and
named in the log (``--data.format NAME`` forces one; data/sclap/layouts.py).
Nothing is ever written into a user's folder: the features and baselines
derived from it are cached under ``data.cache_dir`` (default data_cache/).
Pretrained towers (issue 11): ``--model.audio.pretrained DIR`` (a saved
ClapModel / ClapAudioModel, e.g. laion/clap-htsat-unfused, or an ASTModel)
puts the checkpoint's audio tower on the W waveform, which the dataset then
hands the model beside the features (models/sclap/towers.py);
``--model.text.pretrained DIR`` takes its text tower or any AutoModel.
Event slots (issue 13): ``--model.event_slots true --loss.event_weight 0.5``
gives each side two event vectors (models/sclap/slots.py) trained against
the single-event caption of each clip's first and second event (L_evt,
losses/sclap_loss.py); the data must carry those captions (generated diverse
data do; data/sclap/manifest.py, stclotho.py), or training is refused.
The pieces live in data/sclap/ (generator, dataset, collate), models/sclap/
(front end, encoders, classical DOA), losses/sclap_loss.py and
families/sclap/evaluation.py; this module only wires them to the loop.
"""
import hashlib
import json
import os

from data.cache import UserDataError, check_user_folder, derived_dir, ensure_generated, resolve_root
from data.sclap.audio_io import LONG_CLIPS
from data.sclap.captions import VERSION as DIVERSE_VERSION
from data.sclap.dataset import VARIANTS, STClothoDataset, collate
from data.sclap.generate import MANIFEST, caption_grammar, generate
from data.sclap.layouts import LAYOUTS, detect
from families.sclap.evaluation import evaluate_sclap
from losses.sclap_loss import SCLAPLoss
from models.sclap.model import build_sclap
from models.sclap.towers import is_tower
from training.config import REPO_ROOT, ConfigError
from training.text_cache import build_text_cache, load_text_cache

FRONTEND_KEYS = ("sample_rate", "clip_seconds", "n_fft", "hop_length", "n_mels", "f_min", "f_max")
GEN_KEYS = ("num_train", "num_val", "num_test", "num_zeroshot", "gen_seed", "sample_rate",
            "clip_seconds", "event_seconds", "max_elevation", "max_order", "snr_db", "captions")


def gen_params(cfg):
    """Every key the generator reads (data/sclap/generate.py), so the cache
    marker tells all generated datasets apart. gen_workers only splits the
    work: each item has its own RNG, so it is not one of them. data.captions
    is left out when it is template (or missing: a config from before issue
    13), so those data keep the marker and folder name they had. Diverse data
    also record the form of their manifest (data/sclap/captions.py VERSION;
    2: the event caption columns), so a folder generated before the columns
    existed is rebuilt, not read as if it had them."""
    params = {k: cfg["data"][k] for k in GEN_KEYS if k in cfg["data"]}
    if caption_grammar(params) == "template":
        params.pop("captions", None)
    else:
        params["diverse_grammar"] = DIVERSE_VERSION
    return params


def data_dir(cfg):
    """The data folder, absolute: data.root resolved against the current
    directory, or (data.root null) data_cache/sclap/ in the repository, named
    after the split sizes and a hash of all generator params."""
    d = cfg["data"]
    if d["root"]:
        return resolve_root(d["root"])
    if not d["generate"]:
        raise UserDataError("data.generate is false but data.root is not set: give the folder "
                            f"holding your data ({MANIFEST}, or T-SALM's stClotho folders)")
    digest = hashlib.md5(json.dumps(gen_params(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(REPO_ROOT, "data_cache", "sclap",
                        f"synth_{d['num_train']}_{d['num_val']}_{d['num_test']}_{digest}")


def cache_dir(cfg):
    """Where the front-end features and the classical-DOA baseline are cached:
    inside generated data (our folder); for a user's folder, which we never
    write into, under data.cache_dir (default data_cache/ in the current
    directory), keyed by the folder's path."""
    return derived_dir(data_dir(cfg), "sclap", cfg["data"]["generate"], cfg["data"]["cache_dir"])


def layout_of(cfg, log=None):
    """The layout name of the data folder (generated data: the manifest)."""
    d = cfg["data"]
    if d["long_clips"] not in LONG_CLIPS:
        raise UserDataError(f"data.long_clips must be one of {', '.join(LONG_CLIPS)}, got "
                            f"{d['long_clips']!r}")
    if d["generate"]:
        if d["format"] not in ("auto", "manifest", None):
            raise UserDataError(f"--data.format {d['format']}: the generator writes the manifest "
                                f"layout; pass --data.generate false to read a {d['format']} folder")
        return "manifest"
    root = data_dir(cfg)
    lay = detect(root, d["format"])
    if log:
        how = "forced by --data.format" if d["format"] not in ("auto", None) else \
            f"detected; --data.format {' | '.join(x.name for x in LAYOUTS)} forces one"
        log(f"sclap: data.root {root}: {lay.name} layout ({how}): {lay.description}")
    return lay.name


def prepare_data(cfg):
    root = data_dir(cfg)
    if not cfg["data"]["generate"]:
        check_user_folder(root, "sCLAP data")
        layout_of(cfg, log=print)
    else:
        generate_data(cfg, root)
    # model.text.disk_cache: every caption of every split through the frozen text backbone once,
    # before training (training/text_cache.py), instead of each batch's new captions in the steps
    build_text_cache(cache_dir(cfg), cfg["model"].get("text"), lambda: dataset_texts(build_datasets(cfg)),
                     cfg.get("precision", "fp32"))


def generate_data(cfg, root):
    layout_of(cfg)
    params = gen_params(cfg)

    def build(tmp):
        print(f"sclap: generating {params['num_train']}/{params['num_val']}/{params['num_test']} "
              f"triplets in {root}")
        generate({**params, "dir": tmp}, workers=int(cfg["data"]["gen_workers"] or 1))
    ensure_generated(root, params, build, "sCLAP triplets")


def dataset_texts(datasets):
    """Every string the text tower meets in training and evaluation of these
    datasets ({split: STClothoDataset}): each variant's captions, plain
    captions and single-event captions (event slots)."""
    texts = set()
    for ds in datasets.values():
        for it in ds.items:
            for v in VARIANTS:
                texts.update(it[v]["captions"])
                texts.update(it[v]["plain_captions"])
                for caps in it[v].get("event_captions") or []:
                    texts.update(caps)
    return sorted(texts)


def frontend_cfg(cfg):
    return {k: cfg["data"][k] for k in FRONTEND_KEYS}


def wave_rate(cfg):
    """The rate of the W waveform the data hands the model: data.sample_rate
    with a pretrained audio tower (which resamples it to its checkpoint's
    rate), None without one (the default path reads no waveform)."""
    return cfg["data"]["sample_rate"] if (cfg["model"].get("audio") or {}).get("pretrained") else None


def build_datasets(cfg):
    d, root = cfg["data"], data_dir(cfg)
    aug = None
    if d["spec_augment"]:
        aug = {k: d[k] for k in ("time_masks", "time_width", "freq_masks", "freq_width")}
    fe, layout, cache = frontend_cfg(cfg), layout_of(cfg), cache_dir(cfg)
    return {split: STClothoDataset(root, split, fe, spec_augment=aug, seed=cfg["seed"],
                                   with_single=split == "test", cache_dir=cache, layout=layout,
                                   long_clips=d["long_clips"], resample=d["resample"],
                                   wave_rate=wave_rate(cfg), event_captions=event_weight(cfg) > 0)
            for split in ("train", "val", "test")}


def event_weight(cfg):
    """loss.event_weight (a config from before the key: 0, no event loss); > 0
    needs model.event_slots, whose slots it trains."""
    w = float(cfg["loss"].get("event_weight", 0.0))
    if w < 0:
        raise ConfigError(f"loss.event_weight must be >= 0, got {w}")
    if w > 0 and not cfg["model"].get("event_slots", False):
        raise ConfigError(f"loss.event_weight {w} trains the event slots: it needs "
                          f"--model.event_slots true")
    return w


LEGACY_TEXT_KEYS = {"text_model": "pretrained", "freeze_text_backbone": "freeze",
                    "unfreeze_last_n": "unfreeze_last_n"}


def build_model(cfg):
    m = dict(cfg["model"])
    m["channels"] = tuple(m["channels"])
    # a checkpoint saved before model.text (issue 11) names its text keys flat
    legacy = {LEGACY_TEXT_KEYS[k]: m.pop(k) for k in list(m) if k in LEGACY_TEXT_KEYS}
    if legacy:
        m["text"] = {**legacy, **(m.get("text") or {})}
    model = build_sclap(m, sample_rate=cfg["data"]["sample_rate"])
    load_text_cache(model.text_encoder, cache_dir(cfg), m.get("text"), cfg.get("precision", "fp32"))
    if model.needs_wave:
        tower, rate = model.sed_branch, cfg["data"]["sample_rate"]
        note = "" if rate >= tower.model_rate else (
            f"; nothing above {rate // 2} Hz reaches it (data.sample_rate {tower.model_rate} reads "
            "the files at the checkpoint's rate)")
        spatial = ("the same weights, patch embedding widened to 7 channels"
                   if is_tower(model.doa_branch) else "conv, from scratch")
        print(f"sclap: model.audio: {type(tower.backbone).__name__} from {tower.settings['pretrained']} "
              f"on the W channel at {rate} Hz, resampled to the checkpoint's {tower.model_rate} Hz"
              f"{note}; spatial branch: {spatial}")
    return model


def build_criterion(cfg, rank=0, world_size=1):
    lc = cfg["loss"]
    return SCLAPLoss(lc["loss_weights"], lc["sem_start_epoch"], lc["ts_ramp_epochs"], lc["logit_clamp"],
                     local_loss=cfg.get("local_loss", False),
                     gather_with_grad=cfg.get("gather_with_grad", False), rank=rank, world_size=world_size,
                     event_weight=event_weight(cfg))


def evaluate(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    return evaluate_sclap(model, criterion, dataset, cfg, device, out_dir, writer, step)
