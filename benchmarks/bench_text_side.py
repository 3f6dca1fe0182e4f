"""Per-step time of the radar text side (issue 13 item 3), side by side.

    OMP_NUM_THREADS=1 python benchmarks/bench_text_side.py --rounds 2

One step = the bundled all-MiniLM-L6-v2 TextEncoder on a batch of radar
captions (data/radar/text.py's generator, 2-3 actions a clip), forward,
backward of a loss on the pooled and token features, and an AdamW step on
whatever trains. Configurations:

  frozen, cached         today's default: the caption cache, only proj trains
  + head N               model.text.head_layers N over the cached states (width:
                         the hidden size, 384, or head_dim 128)
  last n, prefix cache   unfreeze_last_n n: the frozen prefix's states are
                         cached, only the last n layers run per step
  last n, no cache       the same weights trained, the whole backbone run
                         every step (cache_features false: what
                         unfreeze_last_n cost before issue 13)

Every cache is filled before timing (a long run meets each caption many
times). The configurations take turns within each round (the machine's
noise hits all alike); the median over every round's steps is printed.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.radar.text import make_captions  # noqa: E402
from models.text_encoder import TextEncoder  # noqa: E402

ACTIONS = [("walk", {"speed": 1.0, "direction": "towards"}), ("run", {"direction": "away"}),
           ("jump", {"reps": 2}), ("wave", {"arm": "left", "reps": 3}), ("squat", {"reps": 2}),
           ("sit down", {}), ("stand up", {}), ("turn around", {"direction": "left"}),
           ("kick", {"leg": "right", "reps": 1}), ("clap", {"reps": 4}),
           ("bend over", {}), ("punch", {"arm": "right", "reps": 2})]

CONFIGS = [
    ("frozen, cached", {}),
    ("+ head 1 layer", {"head_layers": 1}),
    ("+ head 2 layers", {"head_layers": 2}),
    ("+ head 1, width 128", {"head_layers": 1, "head_dim": 128}),
    ("+ head 2, width 128", {"head_layers": 2, "head_dim": 128}),
    ("last 1, prefix cache", {"unfreeze_last_n": 1}),
    ("last 2, prefix cache", {"unfreeze_last_n": 2}),
    ("last 1, no cache", {"unfreeze_last_n": 1, "cache_features": False}),
    ("last 2, no cache", {"unfreeze_last_n": 2, "cache_features": False}),
]


def radar_captions(n, seed=0):
    """``n`` captions of 2-3 action clips, as the radar generator writes them."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        k = int(rng.integers(2, 4))
        picks = rng.choice(len(ACTIONS), size=k, replace=False)
        actions = [{"name": ACTIONS[i][0], "params": ACTIONS[i][1]} for i in picks]
        out.append(make_captions(actions, rng, num=1)[0][0])
    return out


def build(settings, embed_dim):
    torch.manual_seed(0)
    enc = TextEncoder(embed_dim=embed_dim, freeze_backbone=True, **settings).train()
    params = [p for p in enc.parameters() if p.requires_grad]
    return enc, torch.optim.AdamW(params, lr=1e-4)


def step(enc, opt, captions):
    out = enc(captions)
    m = out.mask.unsqueeze(-1).float()
    loss = out.features.square().mean() + (out.tokens * m).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--embed-dim", type=int, default=128)
    args = ap.parse_args(argv)
    captions = radar_captions(args.batch_size)
    runs = [(name, *build(s, args.embed_dim)) for name, s in CONFIGS]
    for _, enc, opt in runs:   # warm-up: fills the caches, first-call overheads
        step(enc, opt, captions)
    times = {name: [] for name, _, _ in runs}
    for _ in range(args.rounds):
        for name, enc, opt in runs:
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step(enc, opt, captions)
                times[name].append(time.perf_counter() - t0)
    tokens = runs[0][1].tokenize(captions)["input_ids"].shape[1]
    print(f"text side, bundled all-MiniLM-L6-v2: batch {args.batch_size} radar captions "
          f"({tokens} tokens padded), {torch.get_num_threads()} thread(s), fp32, "
          f"{args.rounds} rounds x {args.steps} steps, median")
    base = statistics.median(times[runs[0][0]])
    print(f"{'configuration':<24}{'ms/step':>9}{'x frozen':>10}{'trainable':>12}")
    for name, enc, _ in runs:
        t = statistics.median(times[name])
        n = sum(p.numel() for p in enc.parameters() if p.requires_grad)
        print(f"{name:<24}{1000 * t:>9.1f}{t / base:>10.2f}{n / 1e6:>11.2f}M")


if __name__ == "__main__":
    main()
