"""Family `grounding`: fine-grained image-text pretraining (seed 004).

Entity spans <-> object boxes on scenes in the Flickr30k Entities format
(generated, or the real dataset via data.generate false and data.root).
A user's folder is only read: with data.generate false nothing is written
into data.root (grounding derives no cache from the data).

data.captions picks the generator's caption grammar (diverse | template, the
same images under both); a config without the key (a checkpoint of before
issue 13) means template. Generated folders also hold the scenes' objects,
from which evaluation writes the held-out captions (heldout_ metrics).
"""
import contextlib
import io
import os
import warnings

from data.cache import UserDataError, check_user_folder, derived_dir, ensure_generated, resolve_root
from data.layout import Layout, detect_layout, exists
from data.grounding.dataset import GroundingDataset, collate  # noqa: F401  (contract)
from data.grounding.captions import VERSION as CAPTIONS_VERSION
from data.grounding.files import ZIP
from data.grounding.generate import SCENE_OBJECTS, generate
from data.grounding.spans import swap_left_right
from families.grounding.evaluation import evaluate  # noqa: F401  (contract)
from losses.grounding_loss import GroundingLoss
from models.grounding.model import GroundingModel
from training.text_cache import build_text_cache, load_text_cache

# every argument of data.grounding.generate.generate, in its order: the cache marker records them all
GEN_KEYS = ("num_train", "num_val", "num_test", "gen_image_size", "captions_per_image", "gen_seed",
            "captions")
# the on-disk format the generator writes, in the marker too: data generated before the
# XML boxes became 1-based (as the real files) are rebuilt, not misread by one pixel, and
# data without the scene objects (before issue 13) are rebuilt with them, as are captions of
# an earlier version of the diverse grammar
GEN_FORMAT = {"xml_boxes": "1-based", "scene_objects": SCENE_OBJECTS, "diverse_grammar": CAPTIONS_VERSION}
# a checkpoint's config from before a generator key existed: the behaviour of before the key
GEN_BEFORE = {"captions": "template"}


def gen_params(cfg):
    """The generator's arguments from cfg["data"] (a key missing: its GEN_BEFORE value)."""
    d = cfg["data"]
    return {k: d[k] if k in d else GEN_BEFORE[k] for k in GEN_KEYS}


def _all(*probes):
    return lambda root: all(p(root) for p in probes)


# the documented layouts this loader reads (data/layout.py); the generator writes the first
LAYOUTS = [
    Layout("flickr30k_entities",
           _all(exists("Sentences"), exists("Annotations"), exists("flickr30k-images")),
           "Sentences/<id>.txt, Annotations/<id>.xml (BryanPlummer/flickr30k_entities, "
           "annotations.zip unpacked), flickr30k-images/<id>.jpg (the Flickr30k images) and "
           "train.txt/val.txt/test.txt"),
    Layout("flickr30k_entities_zip", _all(exists(ZIP), exists("flickr30k-images")),
           f"{ZIP} holding Sentences/ and Annotations/ (the repository as cloned; read in place), "
           "flickr30k-images/<id>.jpg and train.txt/val.txt/test.txt"),
]


def layout(cfg):
    """The layout's name: the generator's for generated data, else what data.root holds."""
    d = cfg["data"]
    if d["generate"]:
        return LAYOUTS[0].name
    return detect_layout(data_root(cfg), LAYOUTS, d["format"], "grounding").name


def data_root(cfg):
    """data.root (relative: against the current directory), or by default a
    folder per generator setting, so that settings do not evict each other."""
    d, g = cfg["data"], gen_params(cfg)
    root = d["root"] or os.path.join("data_cache", "grounding",
                                     f"synth_{g['num_train']}_{g['num_val']}_{g['num_test']}_"
                                     f"{g['gen_image_size']}px_c{g['captions_per_image']}_s{g['gen_seed']}_"
                                     f"{g['captions']}")
    return resolve_root(root)


def prepare_data(cfg):
    d, root = cfg["data"], data_root(cfg)
    if not d["generate"]:
        if not d["root"]:
            raise UserDataError("data.generate false reads your data: pass --data.root DIR "
                                "(a Flickr30k Entities folder)")
        check_user_folder(root, "Flickr30k Entities")
        lay = detect_layout(root, LAYOUTS, d["format"], "grounding")
        how = "forced by --data.format" if d["format"] not in (None, "", "auto") else "detected"
        print(f"grounding: data.root {root}: layout {lay.name} ({how}); read only, nothing is "
              f"written there")
    else:
        params = gen_params(cfg)

        def build(tmp):
            secs = generate(tmp, *params.values())
            print(f"grounding: generated data in {root} in {secs:.1f} s ({params['captions']} captions)")

        ensure_generated(root, {**params, **GEN_FORMAT}, build, "grounding scenes")
    # model.text.disk_cache: every caption of every split through the frozen text backbone once,
    # before training (training/text_cache.py)
    build_text_cache(cache_dir(cfg), cfg["model"].get("text"), lambda: dataset_texts(_quiet_datasets(cfg)),
                     cfg.get("precision", "fp32"))


def cache_dir(cfg):
    """Files derived from the data (the text cache): inside generated data (our
    folder); for a user's folder, under data_cache/grounding/derived/."""
    return derived_dir(data_root(cfg), "grounding", cfg["data"]["generate"], cfg["data"].get("cache_dir"))


def dataset_texts(datasets):
    """Every caption the text tower meets in training and evaluation of these
    datasets ({split: GroundingDataset}), also as a horizontal flip serves it
    ("left" and "right" swapped) where the split flips."""
    texts = set()
    for ds in datasets.values():
        for rec in ds.records:
            for c in rec["captions"]:
                texts.add(c.text)
                if ds.train and ds.view.hflip > 0:
                    texts.add(swap_left_right(c).text)
    return sorted(texts)


def _quiet_datasets(cfg):
    """build_datasets without its notes and warnings: the run's own build says them, once."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return build_datasets(cfg)


def build_datasets(cfg):
    d, m = cfg["data"], cfg["model"]
    common = dict(image_size=d["image_size"], patch_size=m["patch_size"], max_objects=d["max_objects"],
                  max_entities=d["max_entities"], crop_scale_min=d["crop_scale_min"], hflip=d["hflip"],
                  color_jitter=d["color_jitter"], randaugment=d["randaugment"],
                  randaugment_magnitude=d["randaugment_magnitude"],
                  mask_strategy=d["mask_strategy"], mask_ratio=d["mask_ratio"], seed=cfg["seed"],
                  layout=layout(cfg))
    root = data_root(cfg)
    out = {split: GroundingDataset(root, split, train=split == "train", **common)
           for split in ("train", "val", "test")}
    for ds in out.values():
        print(ds.describe())
    return out


def build_model(cfg):
    m = dict(cfg["model"])
    text = dict(m.get("text") or {})
    if {"model_name", "freeze_backbone"} & set(text):   # a checkpoint's config from before issue 11
        text.setdefault("pretrained", text.pop("model_name", None))
        text.setdefault("freeze", text.pop("freeze_backbone", True))
        text.pop("model_name", None), text.pop("freeze_backbone", None)
        m["text"] = text
    model = GroundingModel(image_size=cfg["data"]["image_size"], **m)
    load_text_cache(model.text, cache_dir(cfg), m.get("text"), cfg.get("precision", "fp32"))
    return model


def build_criterion(cfg, rank=0, world_size=1):
    l = cfg["loss"]
    return GroundingLoss(loss_weights=l["loss_weights"], weight_schedule=l["weight_schedule"],
                         epochs=cfg["epochs"], fine_cross_sample=l["fine_cross_sample"],
                         hard_negatives=l["hard_negatives"], hard_negative_k=l["hard_negative_k"],
                         masked_negatives=cfg["model"]["masked_negatives"],
                         init_temperature=l["init_temperature"], local_loss=cfg["local_loss"],
                         gather_with_grad=cfg["gather_with_grad"], rank=rank, world_size=world_size)
