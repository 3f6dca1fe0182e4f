"""Where a training step's time goes, for one family (median of 3 rounds):
a plain step, the same samples as 4 naive micro-batches, the exact accumulated
step, a no-grad forward, and the criterion alone.

    python benchmarks/profile_step.py [--precision fp32] [other config flags]
"""
import os, statistics, sys, time
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from families import load_family
from training.config import load_config
from training.accumulation import ModelAndLoss, forward_backward
from training.precision import autocast as mk, grad_scaler, resolve_precision
from training.data import cat_batches
cfg = load_config((["--family", "radar", "--preset", "quick"] if "--family" not in sys.argv and "--config" not in sys.argv else []) + sys.argv[1:])
cfg["precision"], _ = resolve_precision(cfg["precision"], torch.device("cpu"))
fam = load_family(cfg["family"]); ds = fam.build_datasets(cfg)["train"]
m = ModelAndLoss(fam.build_model(cfg), fam.build_criterion(cfg, 0, 1)); m.train()
ac = mk(cfg["precision"], torch.device("cpu")); sc = grad_scaler(cfg["precision"], torch.device("cpu"))
b = fam.collate([ds[i] for i in range(64)])
sl = lambda k: [{kk: v[i*64//k:(i+1)*64//k] for kk, v in b.items()} for i in range(k)]
def t(f):
    s = time.perf_counter(); f(); return time.perf_counter() - s
def plain(mb):
    for x in mb:
        with ac(): l, _ = m(x)
        l.backward()
def enc_only(mb):
    with torch.no_grad():
        for x in mb:
            with ac(): m.model(x)
def loss_only():
    with torch.no_grad():
        with ac(): f = m.model(b)
    f = {k: (v.detach().requires_grad_(True) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in f.items()}
    s = time.perf_counter()
    with ac(): l, _ = m.criterion(f, b, 0)
    l.backward(); return time.perf_counter() - s
import contextlib
R = {k: [] for k in ["plain64", "plain16x4", "accum4", "nograd64", "loss64"]}
for r in range(3):
    R["plain64"].append(t(lambda: plain([b])))
    R["plain16x4"].append(t(lambda: plain(sl(4))))
    R["accum4"].append(t(lambda: forward_backward(m, m, sl(4), 0, ac, sc, torch.device("cpu"))))
    R["nograd64"].append(t(lambda: enc_only([b])))
    R["loss64"].append(loss_only())
for k, v in R.items(): print(k, f"{statistics.median(v):.3f}s")
