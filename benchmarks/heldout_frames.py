"""Radar temporal-order accuracy per sentence frame, for a checkpoint.

    python benchmarks/heldout_frames.py --checkpoint logs/quickstart/checkpoints/latest.pt [--grammar heldout]

eval.py's ``temporal_order_acc`` (and ``heldout_``) pools every (caption,
order-swapped caption) pair of the test split's multi-action clips. This
splits it by the frame each caption was made from (data/radar/heldout.py's
frames with ``--grammar heldout``, data/radar/captions.py's with ``diverse``),
and by whether the frame's surface order is the time order ("X, then Y")
or not ("prior to Y, X"): a text side that reads only which action is named
first scores high on the first kind and below chance on the second. A caption
is matched to a frame by the frame's own words; captions two frames could
have made (among the frames of the clip's number of actions) are counted
apart ("ambiguous").
"""
import argparse
import collections
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.radar import captions as diverse  # noqa: E402
from data.radar.caption_grammar import slot_order  # noqa: E402
from data.radar.heldout import HELDOUT  # noqa: E402
from eval import load_stage1  # noqa: E402
from families.radar.evaluation import (encode_clips, encoded_lookup, heldout_set, order_pairs,  # noqa: E402
                                       order_scores, temporal_order_pairs)
from training.evaluation import eval_mode  # noqa: E402
from training.precision import resolve_precision  # noqa: E402
from training.resources import apply_thread_budget  # noqa: E402


def frame_pattern(frame):
    """A regex matching the captions a frame makes (as served: lower case, no final period)."""
    parts = re.split(r"\{\d:[a-z]+\}|\{S\}|\{P\}", frame)
    return re.compile("^" + ".+?".join(re.escape(p.lower()) for p in parts) + r"\.?$")


def frame_of(caption, frames):
    hits = [f for f, rx in frames if rx.match(caption)]
    return hits[0] if len(hits) == 1 else ("ambiguous" if hits else "unmatched")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--grammar", default="heldout", choices=["heldout", "diverse"])
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    device = torch.device("cpu")
    family, cfg, model, criterion, _ = load_stage1(args.checkpoint, [], device)
    cfg["precision"], _ = resolve_precision(cfg.get("precision", "auto"), device)
    apply_thread_budget(cfg)
    family.prepare_data(cfg)
    ds = family.build_datasets(cfg)[args.split]
    grammar = HELDOUT if args.grammar == "heldout" else diverse.DIVERSE
    frames = {n: [(f, frame_pattern(f)) for f in grammar.frames[n]] for n in (2, 3)}
    with torch.no_grad(), eval_mode(model), eval_mode(criterion):
        radar, info = encode_clips(model, ds, cfg, device)
        if args.grammar == "heldout":
            pairs = order_pairs(*heldout_set(ds, info))
        else:
            pairs = temporal_order_pairs(ds, info)
        pick = encoded_lookup(model, [p[k] for p in pairs for k in (1, 2)], cfg, device)
        _, (pos, neg), _ = order_scores(criterion, radar, pairs, pick, device)
    hits = (pos > neg).tolist()
    by_frame, by_kind = collections.defaultdict(list), collections.defaultdict(list)
    for (i, caption, _), hit in zip(pairs, hits):
        f = frame_of(caption, frames[len(ds.base.clip_meta(i)["actions"])])
        by_frame[f].append(hit)
        kind = f if f in ("ambiguous", "unmatched") else (
            "surface order = time order" if slot_order(f) == sorted(slot_order(f)) else "surface order reversed")
        by_kind[kind].append(hit)
    print(f"{args.checkpoint}: {args.split} split, {args.grammar} captions, {len(pairs)} order pairs, "
          f"accuracy {sum(hits) / len(hits):.3f}")
    for kind, v in sorted(by_kind.items()):
        print(f"  {kind:<28} {sum(v) / len(v):.3f}  ({len(v)} pairs)")
    print("per frame:")
    for f, v in sorted(by_frame.items(), key=lambda kv: -len(kv[1])):
        print(f"  {sum(v) / len(v):.3f}  {len(v):>4}  {f}")


if __name__ == "__main__":
    main()
