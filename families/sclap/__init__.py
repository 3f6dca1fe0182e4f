"""sCLAP family: spatial-temporal audio <-> text (seed 002, BRIEF sec. 3).

    python train_stage1.py --family sclap --preset quick
    python eval.py --checkpoint logs/<name>/checkpoints/latest.pt --out DIR

Data: generated stClotho-style triplets (data/sclap/generate.py) or a real
dataset in the same format (data.generate false, data.root = its folder).
The pieces live in data/sclap/ (generator, dataset, collate), models/sclap/
(front end, encoders, classical DOA), losses/sclap_loss.py and
families/sclap/evaluation.py; this module only wires them to the loop.
"""
import os

from data.sclap.dataset import STClothoDataset, collate
from data.sclap.generate import MANIFEST, generate
from families.sclap.evaluation import evaluate_sclap
from losses.sclap_loss import SCLAPLoss
from models.sclap.model import build_sclap
from training.config import REPO_ROOT

FRONTEND_KEYS = ("sample_rate", "clip_seconds", "n_fft", "hop_length", "n_mels", "f_min", "f_max")
GEN_KEYS = ("num_train", "num_val", "num_test", "num_zeroshot", "gen_seed", "sample_rate",
            "clip_seconds", "event_seconds", "max_elevation", "max_order", "snr_db")


def data_dir(cfg):
    d = cfg["data"]
    if not d["generate"]:
        if not d["root"]:
            raise ValueError("data.generate is false but data.root is not set: give the folder "
                             f"holding {MANIFEST}")
        return d["root"]
    if d["root"]:
        return d["root"]
    tag = (f"synth_{d['num_train']}_{d['num_val']}_{d['num_test']}_{d['num_zeroshot']}"
           f"_{d['sample_rate']}_s{d['gen_seed']}")
    return os.path.join(REPO_ROOT, "data_cache", "sclap", tag)


def prepare_data(cfg):
    root = data_dir(cfg)
    if os.path.exists(os.path.join(root, MANIFEST)):
        return
    if not cfg["data"]["generate"]:
        raise FileNotFoundError(f"{os.path.join(root, MANIFEST)}: manifest not found and "
                                f"data.generate is false")
    gen = {k: cfg["data"][k] for k in GEN_KEYS}
    gen["dir"] = root
    print(f"sclap: generating {gen['num_train']}/{gen['num_val']}/{gen['num_test']} triplets in {root}")
    generate(gen, workers=int(cfg["data"]["gen_workers"]))


def frontend_cfg(cfg):
    return {k: cfg["data"][k] for k in FRONTEND_KEYS}


def build_datasets(cfg):
    d, root = cfg["data"], data_dir(cfg)
    aug = None
    if d["spec_augment"]:
        aug = {k: d[k] for k in ("time_masks", "time_width", "freq_masks", "freq_width")}
    fe = frontend_cfg(cfg)
    return {split: STClothoDataset(root, split, fe, spec_augment=aug, seed=cfg["seed"],
                                   with_single=split == "test")
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
