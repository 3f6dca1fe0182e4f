"""Family `grounding`: fine-grained image-text pretraining (seed 004).

Entity spans <-> object boxes on scenes in the Flickr30k Entities format
(generated, or the real dataset via data.generate false and data.root).
"""
import os

from data.cache import check_user_folder, ensure_generated, resolve_root
from data.grounding.dataset import GroundingDataset, collate  # noqa: F401  (contract)
from data.grounding.generate import generate
from families.grounding.evaluation import evaluate  # noqa: F401  (contract)
from losses.grounding_loss import GroundingLoss
from models.grounding.model import GroundingModel

# every argument of data.grounding.generate.generate, in its order: the cache marker records them all
GEN_KEYS = ("num_train", "num_val", "num_test", "gen_image_size", "captions_per_image", "gen_seed")


def data_root(cfg):
    """data.root (relative: against the current directory), or by default a
    folder per generator setting, so that settings do not evict each other."""
    d = cfg["data"]
    root = d["root"] or os.path.join("data_cache", "grounding",
                                     f"synth_{d['num_train']}_{d['num_val']}_{d['num_test']}_"
                                     f"{d['gen_image_size']}px_c{d['captions_per_image']}_s{d['gen_seed']}")
    return resolve_root(root)


def prepare_data(cfg):
    d, root = cfg["data"], data_root(cfg)
    if not d["generate"]:
        check_user_folder(root, "Flickr30k Entities")
        for sub in ("flickr30k-images", "Sentences", "Annotations"):
            if not os.path.isdir(os.path.join(root, sub)):
                raise FileNotFoundError(f"{os.path.join(root, sub)}: missing (data.root must hold the "
                                        "Flickr30k Entities layout, or set data.generate true)")
        return

    def build(tmp):
        secs = generate(tmp, *(d[k] for k in GEN_KEYS))
        print(f"grounding: generated data in {root} in {secs:.1f} s")

    ensure_generated(root, {k: d[k] for k in GEN_KEYS}, build, "grounding scenes")


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
