"""Step time per precision and per thread count, per family, side by side.

    python benchmarks/bench_precision.py                       # every family, quick presets
    python benchmarks/bench_precision.py --families radar,sclap --rounds 5
    python benchmarks/bench_precision.py --torchcompile        # compiled towers as extra rows
    python benchmarks/bench_precision.py --torchcompile --torchcompile-backend aot_eager
    python benchmarks/bench_precision.py --attention default,math --precisions amp_bf16

For each family (its ``quick`` preset; the first run generates that preset's
data, as training would) one model takes full training steps (forward,
backward, optimizer) on the same pre-loaded batch for every combination of
fp32 / amp_bf16 / amp (fp16 autocast + GradScaler) and 1..cores intra-op
threads. The combinations are interleaved round by round, so the machine's
noise hits all alike; each row is the median over rounds. The last column is
the ratio to the fastest row of the family, and the line under each table
says which precision ``--precision auto`` picks here and whether it is the
fastest within noise (the spread of the rows' own rounds). With
``--torchcompile`` a second model has its towers compiled as training does
(training/compile.py); its rows follow the eager ones, and a second table
puts eager and compiled side by side per precision and thread count, with
the compile time (the first two steps of each precision, less two timed
steps) and which one is faster. ``--attention`` (a comma list of default,
math, auto) times every row once per attention kernel (config key
``attention``, training/precision.py); without it each row runs the family's
own setting.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch._inductor.config as inductor_config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from families import FAMILIES, load_family  # noqa: E402
from training.accumulation import ModelAndLoss, forward_backward  # noqa: E402
from training.compile import compile_towers  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import to_device  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.precision import (autocast as make_autocast, cpu_flags, grad_scaler,  # noqa: E402
                                resolve_attention, resolve_precision)
from training.resources import apply_thread_budget, available_cores, thread_budget  # noqa: E402

PRECISIONS = ("fp32", "amp_bf16", "amp")


def family_setup(name, preset, overrides, torchcompile, backend="inductor"):
    cfg = load_config(["--family", name, "--preset", preset] + overrides)
    # the data (and any feature cache) the training run itself would prepare
    cfg["precision"] = resolve_precision(cfg["precision"], "cpu")[0]
    apply_thread_budget(cfg, set_torch=False)          # generator workers as training would
    family = load_family(name)
    family.prepare_data(cfg)
    train = family.build_datasets(cfg)["train"]
    device = torch.device("cpu")
    batch = to_device(family.collate([train[i] for i in range(min(len(train), cfg["batch_size"]))]),
                      device)
    torch.manual_seed(0)
    module = ModelAndLoss(family.build_model(cfg), family.build_criterion(cfg, 0, 1)).to(device)
    if torchcompile:   # in place, as train_stage1 does: the same parameter names and groups
        # Inductor's C++ kernels fix their OpenMP thread count when generated, and
        # nothing recompiles them after torch.set_num_threads: without this the
        # compiled rows of every thread count would run the first one's kernels.
        inductor_config.cpp.dynamic_threads = True
        compile_towers(module.model, backend)
    module.train()
    opt, _ = build_optimizer({"model": module.model, "criterion": module.criterion}, cfg)
    return cfg, module, opt, batch


def one_step(module, opt, batch, precision, attention="auto"):
    device = torch.device("cpu")
    autocast, scaler = make_autocast(precision, device, attention), grad_scaler(precision, device)
    opt.zero_grad(set_to_none=True)
    forward_backward(module, module, [batch], 0, autocast, scaler, device)
    scaler.step(opt)
    scaler.update()


def bench_family(name, args, thread_counts):
    cfg, module, opt, batch = family_setup(name, args.preset, args.overrides, False)
    setups = {"eager": (module, opt)}
    if args.torchcompile:
        _, cmod, copt, _ = family_setup(name, args.preset, args.overrides, True,
                                        args.torchcompile_backend)
        setups["compiled"] = (cmod, copt)
    kernels = args.attention or [cfg.get("attention", "auto")]
    rows = [(mode, p, t) + ((a,) if args.attention else ())
            for mode in setups for p in args.precisions for t in thread_counts for a in kernels]
    kernel = lambda r: r[3] if args.attention else kernels[0]   # noqa: E731
    times = {r: [] for r in rows}
    warm = {}                                   # (mode, precision) -> its first two steps, s
    for r in rows:                              # warm-up (and compilation) outside the timing
        mode, p, t = r[:3]
        torch.set_num_threads(t)
        t0 = time.perf_counter()
        for _ in range(2):
            one_step(*setups[mode], batch, p, kernel(r))
        warm.setdefault((mode, p), time.perf_counter() - t0)
    for _ in range(args.rounds):
        for r in rows:
            mode, p, t = r[:3]
            torch.set_num_threads(t)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                one_step(*setups[mode], batch, p, kernel(r))
            times[r].append((time.perf_counter() - t0) / args.steps)
    med = {r: statistics.median(v) for r, v in times.items()}
    best = min(med, key=med.get)
    print(f"\n{name} (quick preset, batch {cfg['batch_size']}), ms per training step, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print(f"  {'mode':9s}{'precision':10s}{'threads':>8s}" + ("  attention" if args.attention else "")
          + f"{'ms/step':>10s}{'spread':>9s}{'x fastest':>11s}")
    for r in rows:
        spread = (max(times[r]) - min(times[r])) / med[r]
        print(f"  {r[0]:9s}{r[1]:10s}{r[2]:8d}" + (f"  {r[3]:9s}" if args.attention else "")
              + f"{1e3 * med[r]:10.1f}{spread:9.0%}{med[r] / med[best]:11.2f}")
    auto, why = resolve_precision("auto", "cpu")
    workers = cfg.get("workers")
    plan = thread_budget(workers=None if workers in (None, "auto") else int(workers))
    threads, workers = plan["threads"], plan["workers"]
    auto_row = ("eager", auto, min(thread_counts, key=lambda t: abs(t - threads)))
    if args.attention:   # the kernel the family's own setting resolves to with that precision
        k = resolve_attention(cfg.get("attention", "auto"), auto, "cpu")[0]
        auto_row += (k if k in kernels else "auto" if "auto" in kernels else k,)
    best = min((r for r in med if r[0] == "eager"), key=med.get)   # auto chooses among these
    noise = (max(times[best]) - min(times[best])) / med[best]
    ratio = med[auto_row] / med[best] if auto_row in med else float("nan")
    verdict = ("not timed (--precisions leaves it out)" if auto_row not in med
               else "the fastest" if auto_row == best else
               f"within noise of the fastest ({ratio:.2f}x, noise {noise:.0%})" if ratio - 1 <= max(noise, 0.05)
               else f"NOT the fastest: {ratio:.2f}x the fastest row {best}")
    print(f"  auto picks {auto} with {auto_row[2]} threads beside {workers} DataLoader workers"
          + (f" and attention {auto_row[3]}" if args.attention else "") + " "
          f"({why}): {verdict}")
    if args.torchcompile:
        print_compile_table(name, args, med, times, warm, thread_counts)
    return {"family": name, "best": best, "auto": auto_row, "ratio": ratio}


def print_compile_table(name, args, med, times, warm, thread_counts):
    """Eager and compiled side by side; compile time = the compiled model's first
    two steps of a precision (its threads' first row) less two timed steps."""
    print(f"  {name}: eager vs --torchcompile ({args.torchcompile_backend}), ms per step")
    print(f"  {'precision':10s}{'threads':>8s}{'eager':>9s}{'compiled':>10s}{'compiled/eager':>16s}"
          f"{'compile s':>11s}  faster")
    for p in args.precisions:
        for t in thread_counts:
            e, c = med[("eager", p, t)], med[("compiled", p, t)]
            compile_s = (f"{warm[('compiled', p)] - 2 * med[('compiled', p, thread_counts[0])]:.1f}"
                         if t == thread_counts[0] else "")
            noise = max((max(times[r]) - min(times[r])) / med[r]
                        for r in (("eager", p, t), ("compiled", p, t)))
            faster = ("within noise" if abs(c / e - 1) <= max(noise, 0.05)
                      else "compiled" if c < e else "eager")
            print(f"  {p:10s}{t:8d}{1e3 * e:9.1f}{1e3 * c:10.1f}{c / e:16.2f}{compile_s:>11s}  {faster}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", default=None, help="comma list (default: 1..cores)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help=f"comma list of {', '.join(PRECISIONS)} (default: all; each compiles anew "
                         "with --torchcompile)")
    ap.add_argument("--torchcompile", action="store_true")
    ap.add_argument("--attention", default=None,
                    help="comma list of default, math, auto: every row once per attention kernel")
    ap.add_argument("--torchcompile-backend", default="inductor",
                    help="inductor (what training uses by default) | aot_eager | ...")
    args, args.overrides = ap.parse_known_args()
    args.precisions = args.precisions.split(",")
    args.attention = args.attention.split(",") if args.attention else None
    if args.attention and args.torchcompile:
        ap.error("--attention and --torchcompile: one at a time")
    unknown = sorted(set(args.precisions) - set(PRECISIONS))
    if unknown:
        ap.error(f"--precisions: unknown {unknown}; expected some of {list(PRECISIONS)}")
    cores = available_cores()
    thread_counts = ([int(t) for t in args.threads.split(",")] if args.threads
                     else list(range(1, cores + 1)))
    flags = cpu_flags()
    print(f"torch {torch.__version__}, {cores} cores available, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bf16 flags: "
          f"{sorted(f for f in flags if 'bf16' in f or f.startswith('amx')) or 'none'}")
    for name in args.families.split(","):
        bench_family(name, args, thread_counts)


if __name__ == "__main__":
    main()
