"""What the held-out phrasing's gap is made of, one part at a time, for a checkpoint of any family with captions.

    python benchmarks/heldout_parts.py --checkpoint logs/quickstart/checkpoints/latest.pt

eval.py's ``heldout_`` metrics score each family's frozen held-out grammar
(data/<family>/heldout.py): its own sentence frames and connectors and its
own words for every concept. This scores the same test items again with one
part of the held-out grammar put back to the training grammar's
(data/<family>/captions.py), the rest held out:

- grounding: one wording kind at a time ("cobalt" -> "blue"; colour, shape,
  size, texture, relation, background), then every entity word at once;
  the held-out grammar's random draws do not depend on the words, so the
  captions are otherwise the same;
- radar: held-out frames with training words, training frames with
  held-out words, and of those the subjects ("an adult") alone and the
  actions' wordings (verbs, directions, speeds, counts, limbs) alone (the
  held-out grammar's per-clip stream);
- sCLAP: training sounds, training directions, training frames, each with
  the rest held out (the held-out grammar's per-item stream).

A row with a part put back is a diagnostic, not a held-out result: that part
is the training grammar's.
"""
import argparse
import contextlib
import os
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from eval import load_stage1  # noqa: E402
from training.evaluation import encode_split, eval_mode  # noqa: E402
from training.precision import resolve_precision  # noqa: E402
from training.resources import apply_thread_budget  # noqa: E402


@contextlib.contextmanager
def patched(module, tables):
    """module's named tables replaced inside the block."""
    saved = {name: getattr(module, name) for name in tables}
    try:
        for name, table in tables.items():
            setattr(module, name, table)
        yield
    finally:
        for name, table in saved.items():
            setattr(module, name, table)


def grounding_variants():
    """{row name: {heldout table name: training table}}; each table maps a value to the
    training grammar's first wording of it (the held-out table's own keys)."""
    from data.grounding import captions as train
    kinds = {"colour": {"COLOURS": {k: v[0] for k, v in train.COLOUR_WORDS.items()}},
             "shape": {"SHAPES": {k: v[0] for k, v in train.SHAPE_WORDS.items()}},
             "size": {"SIZES": {k: v[0] for k, v in train.SIZE_WORDS.items()}},
             "texture": {"TEXTURES": {k: v[0] for k, v in train.TEXTURE_WORDS.items()}},
             "relation": {"RELATIONS": {k: (v[0], v[1]) for k, v in train.RELATION_WORDS.items()}},
             "background": {"BACKGROUNDS": {k: v[0] for k, v in train.BACKGROUND_WORDS.items()}}}
    variants = {"held-out as written (eval.py heldout_)": {}}
    variants.update({f"{k} in training words": t for k, t in kinds.items()})
    variants["every entity word in training words"] = {n: t for k in ("colour", "shape", "size", "texture")
                                                        for n, t in kinds[k].items()}
    return variants


def grounding_rows(model, ds, cfg, device):
    from data.grounding import heldout
    from data.grounding.views import ImageBoxes, collate_image_boxes
    from families.grounding.evaluation import _encode_images, heldout_dataset, text_metrics
    variants = grounding_variants()
    im = encode_split(model, ImageBoxes(ds), collate_image_boxes, cfg, device, forward=_encode_images)
    cols = ("entity_object_acc", "t2i_R@10")
    rows = [("the training grammar (eval.py)", text_metrics(model, ds, im, cfg, device)[0])]
    for name, tables in variants.items():
        with patched(heldout, tables):
            held = heldout_dataset(ds)
        rows.append((name, text_metrics(model, held, im, cfg, device)[0]))
    return cols, rows


def radar_grammars():
    """{row name: Grammar}: the held-out grammar and its mixtures with the training one."""
    from data.radar.captions import DIVERSE
    from data.radar.heldout import HELDOUT
    verbs = ("phrases", "lexicon", "counted", "irregular", "double")   # the action wordings and their fills
    words = lambda g, keys=("subjects",) + verbs: {k: getattr(g, k) for k in keys}
    return {"held-out as written (eval.py heldout_)": HELDOUT,
            "held-out frames, training words": replace(HELDOUT, **words(DIVERSE)),
            "training frames, held-out words": replace(DIVERSE, **words(HELDOUT)),
            "  of which the subjects alone": replace(DIVERSE, **words(HELDOUT, ("subjects",))),
            "  of which the actions' wordings alone": replace(DIVERSE, **words(HELDOUT, verbs))}


def radar_rows(model, criterion, ds, cfg, device):
    from data.radar import heldout
    from families.radar.evaluation import (encode_clips, heldout_set, order_pairs, temporal_order_pairs,
                                           text_side_metrics)
    radar, info = encode_clips(model, ds, cfg, device)
    cols = ("temporal_order_acc", "t2r_R@10", "t2r_R@1")
    rows = [("the training grammar (eval.py)", text_side_metrics(
        model, criterion, radar, info, info["captions"], temporal_order_pairs(ds, info), None, cfg, device)[0])]
    for name, grammar in radar_grammars().items():
        with patched(heldout, {"HELDOUT": grammar}):   # heldout_captions' grammar, with its per-clip stream
            caps, swapped = heldout_set(ds, info)
        rows.append((name, text_side_metrics(model, criterion, radar, info, caps, order_pairs(caps, swapped),
                                             None, cfg, device)[0]))
    return cols, rows


def sclap_variants():
    """{row name: {heldout table name: training table}}, each training table shaped as
    the held-out one (as many wordings a class or a sector as it draws from)."""
    from data.sclap import captions as train
    from data.sclap import heldout
    n_c, n_n = (len(next(iter(heldout.SOUNDS.values()))[k]) for k in ("clauses", "nominals"))
    sounds = {}
    for name, d in train.SOUNDS.items():
        every = train.clauses(name)   # spread over its nouns and verbs
        sounds[name] = dict(clauses=every[::max(1, len(every) // n_c)][:n_c], nominals=(d["nominals"] * n_n)[:n_n])
    n_d = len(heldout.DIRECTIONS[0])
    return {"held-out as written (eval.py heldout_)": {},
            "training sounds": {"SOUNDS": sounds},
            "training directions": {"DIRECTIONS": [w[:n_d] for w in train.DIRECTIONS]},
            "training frames": {"FRAMES": list(train.FRAMES)}}


def sclap_rows(model, ds, cfg, device):
    from data.sclap import heldout
    from data.sclap.dataset import collate
    from families.sclap.evaluation import ENCODE_KEYS, all_caption_metrics, heldout_metrics
    variants = sclap_variants()
    e = encode_split(model, ds, collate, cfg, device, keys=ENCODE_KEYS)
    audio, text = F.normalize(e["audio"], dim=-1), F.normalize(e["text"], dim=-1)
    cols = ("temporal_acc", "spatial_acc", "t2a_R@1")
    rows = [("the training grammar (eval.py)", all_caption_metrics(audio, text, ds, model, cfg, device))]
    for name, tables in variants.items():
        with patched(heldout, tables):
            m = heldout_metrics(model, ds, audio, cfg, device)
        rows.append((name, {k[len("heldout_"):]: v for k, v in m.items()}))
    return cols, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    device = torch.device("cpu")
    family, cfg, model, criterion = load_stage1(args.checkpoint, [], device)[:4]
    cfg["precision"], _ = resolve_precision(cfg.get("precision", "auto"), device)
    apply_thread_budget(cfg)
    family.prepare_data(cfg)
    ds = family.build_datasets(cfg)[args.split]
    with torch.no_grad(), eval_mode(model), eval_mode(criterion):
        if cfg["family"] == "grounding":
            cols, rows = grounding_rows(model, ds, cfg, device)
        elif cfg["family"] == "radar":
            cols, rows = radar_rows(model, criterion, ds, cfg, device)
        elif cfg["family"] == "sclap":
            cols, rows = sclap_rows(model, ds, cfg, device)
        else:
            raise SystemExit(f"{args.checkpoint}: family {cfg['family']!r} has no held-out captions")
    print(f"{args.checkpoint}: {cfg['family']}, {args.split} split")
    print(f"  {'captions':<42}" + "".join(f"{c:>20}" for c in cols))
    for name, m in rows:
        print(f"  {name:<42}" + "".join(f"{m[c]:>20.3f}" for c in cols))


if __name__ == "__main__":
    main()
