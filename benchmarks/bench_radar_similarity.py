"""Cost of each SequenceSimilarity type relative to ``global``, B x B pairs,
forward + backward, measured side by side in one run.

    python benchmarks/bench_radar_similarity.py [--batch 64] [--radar-tokens 28] [--text-tokens 20]

The types are timed round-robin (one repetition of each per round), so load
from other processes on the machine hits them alike; the median over rounds
is reported. Radar tokens: 28 = the quick preset (224 frames / 8), 62 = the
seed's 496 frames / 8.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models.radar.sequence_similarity import TYPES, SequenceSimilarity  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--radar-tokens", type=int, default=28)
    ap.add_argument("--text-tokens", type=int, default=20)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    B, Tr, Lt, D = args.batch, args.radar_tokens, args.text_tokens, args.dim
    radar = torch.randn(B, Tr, D, requires_grad=True)
    text = torch.randn(B, Lt, D, requires_grad=True)
    rm = torch.ones(B, Tr, dtype=torch.bool)
    tm = torch.ones(B, Lt, dtype=torch.bool)
    # realistic padding: clips and captions of different lengths
    for i in range(B):
        rm[i, Tr - i % (Tr // 2):] = False
        tm[i, Lt - i % (Lt // 2):] = False
    sims = {k: SequenceSimilarity(D, k, window_size=args.window) for k in TYPES}
    labels = torch.arange(B)

    def step(k):
        t0 = time.perf_counter()
        S = sims[k](radar, rm, text, tm)  # [B, B]
        loss = torch.nn.functional.cross_entropy(S / 0.07, labels)
        loss.backward()
        radar.grad = text.grad = None
        return time.perf_counter() - t0

    for k in TYPES:  # warm-up
        step(k)
    times = {k: [] for k in TYPES}
    for _ in range(args.rounds):
        for k in TYPES:
            times[k].append(step(k))
    base = statistics.median(times["global"])
    print(f"SequenceSimilarity forward+backward, B={B} ({B * B} pairs), radar tokens={Tr}, "
          f"text tokens={Lt}, D={D}, threads={torch.get_num_threads()}, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'type':<10} {'ms':>10} {'x global':>9}")
    for k in TYPES:
        m = statistics.median(times[k])
        print(f"{k:<10} {1000 * m:>10.1f} {m / base:>9.1f}")


if __name__ == "__main__":
    main()
