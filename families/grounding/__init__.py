"""Family `grounding`: fine-grained image-text pretraining (seed 004).

Entity spans <-> object boxes on scenes in the Flickr30k Entities format
(generated, or the real dataset via data.generate false and data.root).
"""
import json
import os
import shutil
import time

from data.grounding.dataset import GroundingDataset, collate  # noqa: F401  (contract)
from data.grounding.generate import generate
from families.grounding.evaluation import evaluate  # noqa: F401  (contract)
from losses.grounding_loss import GroundingLoss
from models.grounding.model import GroundingModel
from training.config import REPO_ROOT

MARKER = "_generated.json"


def data_root(cfg):
    d = cfg["data"]
    root = d["root"]
    if not root:
        root = os.path.join("data_cache", "grounding",
                            f"synth_{d['num_train']}_{d['num_val']}_{d['num_test']}_"
                            f"{d['gen_image_size']}px_c{d['captions_per_image']}_s{d['gen_seed']}")
    return root if os.path.isabs(root) else os.path.join(REPO_ROOT, root)


def prepare_data(cfg):
    d, root = cfg["data"], data_root(cfg)
    if not d["generate"]:
        for sub in ("flickr30k-images", "Sentences", "Annotations"):
            if not os.path.isdir(os.path.join(root, sub)):
                raise FileNotFoundError(f"{os.path.join(root, sub)}: missing (data.root must hold the "
                                        "Flickr30k Entities layout, or set data.generate true)")
        return
    if os.path.exists(os.path.join(root, MARKER)):
        return
    # written to a private folder and renamed into place when complete, so runs
    # started together never read a half-made cache (the first rename wins)
    tmp = f"{root}.tmp-{os.getpid()}"
    secs = generate(tmp, d["num_train"], d["num_val"], d["num_test"], d["gen_image_size"],
                    d["captions_per_image"], d["gen_seed"])
    with open(os.path.join(tmp, MARKER), "w") as f:
        json.dump({"seconds": round(secs, 1), "time": time.ctime()}, f)
    if os.path.isdir(root) and not os.path.exists(os.path.join(root, MARKER)):
        shutil.rmtree(root)  # a cache left half-made by an older, interrupted run
    try:
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp)  # another run finished first: use its copy
    print(f"grounding: generated data in {root} in {secs:.1f} s")


def build_datasets(cfg):
    d, m = cfg["data"], cfg["model"]
    common = dict(image_size=d["image_size"], patch_size=m["patch_size"], max_objects=d["max_objects"],
                  max_entities=d["max_entities"], crop_scale_min=d["crop_scale_min"], hflip=d["hflip"],
                  mask_strategy=d["mask_strategy"], mask_ratio=d["mask_ratio"], seed=cfg["seed"])
    root = data_root(cfg)
    return {split: GroundingDataset(root, split, train=split == "train", **common)
            for split in ("train", "val", "test")}


def build_model(cfg):
    m = dict(cfg["model"])
    return GroundingModel(image_size=cfg["data"]["image_size"], **m)


def build_criterion(cfg, rank=0, world_size=1):
    l = cfg["loss"]
    return GroundingLoss(loss_weights=l["loss_weights"], weight_schedule=l["weight_schedule"],
                         epochs=cfg["epochs"], fine_cross_sample=l["fine_cross_sample"],
                         hard_negatives=l["hard_negatives"], hard_negative_k=l["hard_negative_k"],
                         masked_negatives=cfg["model"]["masked_negatives"],
                         init_temperature=l["init_temperature"], local_loss=cfg["local_loss"],
                         gather_with_grad=cfg["gather_with_grad"], rank=rank, world_size=world_size)
