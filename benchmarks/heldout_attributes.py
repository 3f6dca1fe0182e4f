"""Grounding's held-out entity accuracy, one wording kind at a time, for a checkpoint.

    python benchmarks/heldout_attributes.py --checkpoint logs/quickstart/checkpoints/latest.pt

eval.py's ``heldout_entity_object_acc`` scores the held-out grammar's
captions (data/grounding/heldout.py), whose colour, shape, size, texture,
relation and background words the training grammar never writes. This scores
the same captions again with one kind of held-out wording put back to a
training wording of the same value ("cobalt" -> "blue"), the rest unchanged
(same images, frames, objects and random draws): how much of the gap to the
training grammar each kind of unseen word costs. The last row puts every
entity word back (colour, shape, size, texture): what the unseen frames
alone cost.
"""
import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.grounding import captions as training  # noqa: E402
from data.grounding import heldout  # noqa: E402
from eval import load_stage1  # noqa: E402
from families.grounding.evaluation import _encode_images, heldout_dataset, text_metrics  # noqa: E402
from data.grounding.views import ImageBoxes, collate_image_boxes  # noqa: E402
from training.evaluation import encode_split, eval_mode  # noqa: E402
from training.precision import resolve_precision  # noqa: E402
from training.resources import apply_thread_budget  # noqa: E402

# held-out table -> the training grammar's first wording of each value (same keys, so the
# held-out grammar's random draws, which never depend on the words, stay the same)
KINDS = {
    "colour": ("COLOURS", {k: v[0] for k, v in training.COLOUR_WORDS.items()}),
    "shape": ("SHAPES", {k: v[0] for k, v in training.SHAPE_WORDS.items()}),
    "size": ("SIZES", {k: v[0] for k, v in training.SIZE_WORDS.items()}),
    "texture": ("TEXTURES", {k: v[0] for k, v in training.TEXTURE_WORDS.items()}),
    "relation": ("RELATIONS", {k: (v[0], v[1]) for k, v in training.RELATION_WORDS.items()}),
    "background": ("BACKGROUNDS", {k: v[0] for k, v in training.BACKGROUND_WORDS.items()}),
}
ENTITY_KINDS = ("colour", "shape", "size", "texture")


@contextlib.contextmanager
def training_words(kinds):
    """heldout's tables of these kinds hold training wordings inside the block."""
    saved = {KINDS[k][0]: getattr(heldout, KINDS[k][0]) for k in kinds}
    try:
        for k in kinds:
            setattr(heldout, KINDS[k][0], KINDS[k][1])
        yield
    finally:
        for name, table in saved.items():
            setattr(heldout, name, table)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    device = torch.device("cpu")
    family, cfg, model, criterion, _ = load_stage1(args.checkpoint, [], device)
    cfg["precision"], _ = resolve_precision(cfg.get("precision", "auto"), device)
    apply_thread_budget(cfg)
    family.prepare_data(cfg)
    ds = family.build_datasets(cfg)[args.split]
    rows = [("held-out as written", ())] + [(f"{k} in training words", (k,)) for k in KINDS]
    rows.append(("every entity word in training words", ENTITY_KINDS))
    with torch.no_grad(), eval_mode(model), eval_mode(criterion):
        im = encode_split(model, ImageBoxes(ds), collate_image_boxes, cfg, device, forward=_encode_images)
        gen = text_metrics(model, ds, im, cfg, device)[0]
        print(f"{args.checkpoint}: {args.split} split, {len(ds)} images")
        print(f"  {'captions':<40} entity_object_acc  t2i R@10")
        print(f"  {'the training grammar (eval.py)':<40} {gen['entity_object_acc']:.3f}              "
              f"{gen['t2i_R@10']:.3f}")
        for name, kinds in rows:
            with training_words(kinds):
                held = heldout_dataset(ds)
            m = text_metrics(model, held, im, cfg, device)[0]
            print(f"  {name:<40} {m['entity_object_acc']:.3f}              {m['t2i_R@10']:.3f}")


if __name__ == "__main__":
    main()
