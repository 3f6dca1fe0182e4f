"""sCLAP family: spatial-temporal audio <-> text (seed 002, BRIEF sec. 3).

    python train_stage1.py --family sclap --preset quick
    python eval.py --checkpoint logs/<name>/checkpoints/latest.pt --out DIR

Data: generated stClotho-style triplets (data/sclap/generate.py) or a real
dataset in the same format (data.generate false, data.root = its folder).
The pieces live in data/sclap/ (generator, dataset, collate), models/sclap/
(front end, encoders, classical DOA), losses/sclap_loss.py and
families/sclap/evaluation.py; this module only wires them to the loop.
"""
import hashlib
import json
import os

from data.cache import UserDataError, check_user_folder, ensure_generated, resolve_root
from data.sclap.dataset import STClothoDataset, collate
from data.sclap.generate import MANIFEST, generate
from families.sclap.evaluation import evaluate_sclap
from losses.sclap_loss import SCLAPLoss
from models.sclap.model import build_sclap
from training.config import REPO_ROOT

FRONTEND_KEYS = ("sample_rate", "clip_seconds", "n_fft", "hop_length", "n_mels", "f_min", "f_max")
GEN_KEYS = ("num_train", "num_val", "num_test", "num_zeroshot", "gen_seed", "sample_rate",
            "clip_seconds", "event_seconds", "max_elevation", "max_order", "snr_db")


def gen_params(cfg):
    """Every key the generator reads (data/sclap/generate.py), so the cache
    marker tells all generated datasets apart. gen_workers only splits the
    work: each item has its own RNG, so it is not one of them."""
    return {k: cfg["data"][k] for k in GEN_KEYS}


def data_dir(cfg):
    """The data folder, absolute: data.root resolved against the current
    directory, or (data.root null) data_cache/sclap/ in the repository, named
    after the split sizes and a hash of all generator params."""
    d = cfg["data"]
    if d["root"]:
        return resolve_root(d["root"])
    if not d["generate"]:
        raise UserDataError("data.generate is false but data.root is not set: give the folder "
                            f"holding {MANIFEST}")
    digest = hashlib.md5(json.dumps(gen_params(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(REPO_ROOT, "data_cache", "sclap",
                        f"synth_{d['num_train']}_{d['num_val']}_{d['num_test']}_{digest}")


def cache_dir(cfg):
    """Where the front-end features and the classical-DOA baseline are cached:
    inside generated data (our folder), beside the repository's data_cache for
    a user's folder (which we never write into)."""
    root = data_dir(cfg)
    if cfg["data"]["generate"]:
        return root
    return os.path.join(REPO_ROOT, "data_cache", "sclap", "derived",
                        hashlib.md5(root.encode()).hexdigest()[:10])


def prepare_data(cfg):
    root = data_dir(cfg)
    if not cfg["data"]["generate"]:
        check_user_folder(root, "sCLAP data")
        if not os.path.exists(os.path.join(root, MANIFEST)):
            raise UserDataError(f"{os.path.join(root, MANIFEST)}: manifest not found and "
                                f"data.generate is false")
        return
    params = gen_params(cfg)

    def build(tmp):
        print(f"sclap: generating {params['num_train']}/{params['num_val']}/{params['num_test']} "
              f"triplets in {root}")
        generate({**params, "dir": tmp}, workers=int(cfg["data"]["gen_workers"]))
    ensure_generated(root, params, build, "sCLAP triplets")


def frontend_cfg(cfg):
    return {k: cfg["data"][k] for k in FRONTEND_KEYS}


def build_datasets(cfg):
    d, root = cfg["data"], data_dir(cfg)
    aug = None
    if d["spec_augment"]:
        aug = {k: d[k] for k in ("time_masks", "time_width", "freq_masks", "freq_width")}
    fe = frontend_cfg(cfg)
    return {split: STClothoDataset(root, split, fe, spec_augment=aug, seed=cfg["seed"],
                                   with_single=split == "test", cache_dir=cache_dir(cfg))
            for split in ("train", "val", "test")}


def build_model(cfg):
    m = dict(cfg["model"])
    m["channels"] = tuple(m["channels"])
    return build_sclap(m)


def build_criterion(cfg, rank=0, world_size=1):
    lc = cfg["loss"]
    return SCLAPLoss(lc["loss_weights"], lc["sem_start_epoch"], lc["ts_ramp_epochs"], lc["logit_clamp"],
                     local_loss=cfg.get("local_loss", False),
                     gather_with_grad=cfg.get("gather_with_grad", False), rank=rank, world_size=world_size)


def evaluate(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    return evaluate_sclap(model, criterion, dataset, cfg, device, out_dir, writer, step)
