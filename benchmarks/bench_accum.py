"""Cost of exact accumulation and the data-wait share of training, side by side.

    python benchmarks/bench_accum.py --family radar --preset quick
    python benchmarks/bench_accum.py --config tests/tiny.yaml --batch-size 64

Prints (1) the compute per sample of ``--accum-freq K`` relative to one
batch of the same effective size (both timed on the same pre-loaded batches,
interleaved, so machine noise hits both alike; goal <= 2.2x), and (2) the
share of step time spent waiting for the DataLoader in a short training run
with the config's workers (goal < 10%).
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from families import load_family  # noqa: E402
from train_stage1 import make_loader  # noqa: E402
from training.accumulation import ModelAndLoss, forward_backward  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import ResumableDistributedSampler, to_device  # noqa: E402
from training.distributed import DistInfo  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.precision import autocast as make_autocast, grad_scaler, resolve_precision  # noqa: E402,E501
from training.resources import apply_thread_budget  # noqa: E402


def step(module, opt, micro, autocast, scaler, device):
    opt.zero_grad(set_to_none=True)
    forward_backward(module, module, micro, 0, autocast, scaler, device)
    scaler.step(opt)
    scaler.update()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--data-steps", type=int, default=30)
    args, rest = ap.parse_known_args()
    cfg = load_config(rest)
    device = torch.device("cpu")
    cfg["precision"], why = resolve_precision(cfg["precision"], device)
    print(f"precision: {cfg['precision']} ({why})\n{apply_thread_budget(cfg)}")
    family = load_family(cfg["family"])
    family.prepare_data(cfg)
    ds = family.build_datasets(cfg)
    torch.manual_seed(0)
    module = ModelAndLoss(family.build_model(cfg), family.build_criterion(cfg, 0, 1)).to(device)
    module.train()
    opt, _ = build_optimizer({"model": module.model, "criterion": module.criterion}, cfg)
    autocast = make_autocast(cfg["precision"], device, cfg.get("attention", "auto"))
    scaler = grad_scaler(cfg["precision"], device)
    B, K = cfg["batch_size"], args.accum
    info = DistInfo(device=device)

    # (1) compute per sample, accumulation vs none, interleaved on the same batches
    loader = make_loader(ds["train"], family.collate, dict(cfg, workers=0), info, B,
                         ResumableDistributedSampler(ds["train"], seed=0, batch_size=B))
    it = iter(loader)
    batches = [to_device(next(it), device) for _ in range(2)]

    def split(batch, k):
        n = B // k
        return [{key: (v[i * n:(i + 1) * n]) for key, v in batch.items()} for i in range(k)]

    step(module, opt, [batches[0]], autocast, scaler, device)  # warm-up (caches, allocator)
    step(module, opt, split(batches[0], K), autocast, scaler, device)
    def naive(b):  # the usual accumulation: negatives only inside each micro-batch
        opt.zero_grad(set_to_none=True)
        for mb in split(b, K):
            with autocast():
                loss, _ = module(mb)
            scaler.scale(loss / K).backward()
        scaler.step(opt)
        scaler.update()

    plain, accum, small = [], [], []
    for r in range(args.rounds):
        b = batches[r % 2]
        t = time.perf_counter()
        step(module, opt, [b], autocast, scaler, device)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        step(module, opt, split(b, K), autocast, scaler, device)
        accum.append(time.perf_counter() - t)
        t = time.perf_counter()
        naive(b)
        small.append(time.perf_counter() - t)
    p, a, n = (statistics.median(x) * 1000 / B for x in (plain, accum, small))
    print(f"family {cfg['family']}, batch {B} = {K} x {B // K}, precision {cfg['precision']}, "
          f"{args.rounds} interleaved rounds (median)")
    print(f"compute per sample: no accumulation {p:.2f} ms, exact --accum-freq {K} {a:.2f} ms, "
          f"ratio {a / p:.2f}x (goal <= 2.2x)")
    print(f"  of which micro-batch size: naive accumulation (negatives within {B // K} only) "
          f"{n:.2f} ms = {n / p:.2f}x; exact vs naive {a / n:.2f}x")

    # (2) data-wait share of a short training run with the configured workers
    sampler = ResumableDistributedSampler(ds["train"], seed=1, batch_size=B)
    loader = make_loader(ds["train"], family.collate, cfg, info, B, sampler)
    it = iter(loader)
    next(it)  # worker start-up is not steady state
    wait = total = 0.0
    for i in range(args.data_steps):
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        t1 = time.perf_counter()
        step(module, opt, [to_device(b, device)], autocast, scaler, device)
        wait += t1 - t0
        total += time.perf_counter() - t0
    print(f"data-wait share over {args.data_steps} steps with {cfg['workers']} workers: "
          f"{wait / total:.1%} (goal < 10%), {args.data_steps * B / total:.1f} samples/s")


if __name__ == "__main__":
    main()
