"""The radar text cache's build: the frozen prefix's states, side by side.

    python benchmarks/bench_text_prefix.py --captions 2048 --rounds 3

With ``model.text.unfreeze_last_n`` n the disk cache stores the states
entering layer L - n of the bundled all-MiniLM-L6-v2 (families/radar/
text_cache.py). Two ways to get them, on the same length-sorted batches of
radar captions, under the precision ``auto`` picks on this machine:

  full model        the whole backbone with output_hidden_states, its
                    state L - n kept (what the build ran before: the last n
                    layers' and the pooler's work thrown away)
  prefix only       the embeddings and layers 0 .. L-n-1 (TextEncoder._prefix)

The two take turns within each round; the median per round is printed with
the ratio, and the states are checked equal. ``--attention math`` adds the
prefix only under PyTorch's math attention kernel (the build runs under
``default``, PyTorch's own choice; ``--unfreeze-last-n 0`` times the whole
backbone, what sCLAP's file stores).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_text_side import radar_captions  # noqa: E402
from models.text_encoder import TextEncoder  # noqa: E402
from training.precision import autocast, resolve_precision  # noqa: E402
from training.resources import available_cores  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--unfreeze-last-n", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--attention", default="default", help="comma list of kernels for 'prefix only'")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or available_cores())
    precision, why = resolve_precision(args.precision, torch.device("cpu"))
    enc = TextEncoder(None, embed_dim=8, freeze_backbone=True, unfreeze_last_n=args.unfreeze_last_n,
                      cache_features=True).eval()
    caps = sorted(set(radar_captions(args.captions)), key=lambda c: (len(enc.tokenizer.tokenize(c)), c))
    batches = [{k: v for k, v in enc.tokenize(caps[i:i + args.batch_size]).items() if k != "offset_mapping"}
               for i in range(0, len(caps), args.batch_size)]
    L = len(enc.backbone.encoder.layer)
    k = L if enc.prefix_layers is None else enc.prefix_layers
    prefix = enc._prefix if enc.prefix_layers is not None else (lambda t: enc.backbone(**t).last_hidden_state)
    ways = {"full model": (lambda t: enc.backbone(**t, output_hidden_states=True).hidden_states[k], "default"),
            "prefix only": (prefix, "default")}
    for kernel in args.attention.split(","):
        if kernel != "default":
            ways[f"prefix, {kernel}"] = (prefix, kernel)
    with torch.no_grad(), autocast(precision, torch.device("cpu"), "default")():   # the states agree exactly
        for t in batches[:2]:
            m = t["attention_mask"].bool()
            assert torch.equal(ways["full model"][0](t)[m], ways["prefix only"][0](t)[m])
    times = {w: [] for w in ways}
    for _ in range(args.rounds):
        for w, (f, kernel) in ways.items():
            t0 = time.perf_counter()
            with torch.no_grad(), autocast(precision, torch.device("cpu"), kernel)():
                for t in batches:
                    f(t)
            times[w].append(time.perf_counter() - t0)
    print(f"{len(caps)} radar captions, batches of {args.batch_size}, states entering layer {k} of "
          f"{L}, {precision} ({why}), {torch.get_num_threads()} threads; "
          f"median of {args.rounds} rounds")
    base = statistics.median(times["full model"])
    for w, ts in times.items():
        print(f"  {w:<12} {statistics.median(ts):7.2f} s   x{statistics.median(ts) / base:.2f} the full model")


if __name__ == "__main__":
    main()
