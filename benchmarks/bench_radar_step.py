"""Full radar training steps of the quick preset, text-side variants side by side.

    python benchmarks/bench_radar_step.py [--threads 2] [--rounds 3] [--attention] [--similarity]

One step = forward, loss, backward and an AdamW step on a batch of 64 clips of
the quick preset's data (generated first if missing), under the preset's
precision (auto), with every caption cache filled beforehand (a long run
meets each caption many times). Variants (all on the same batches):

  before        every order-swapped caption through the text tower (also the
                single-action clips', which the loss multiplies by 0),
                MiniLM's own dropout 0.1 in the two trained layers, one
                length group and PyTorch's default attention kernel
  preset        today's quick preset: swapped captions of multi-action clips
                only, model.text.dropout 0, length groups, and the attention
                kernel of ``attention: auto`` (math under bf16 on CPU)
  last 1        the preset with model.text.unfreeze_last_n 1
  frozen        the preset with a frozen text tower (unfreeze_last_n 0)
  one length group  the preset with the trained text layers on the whole
                batch padded to its longest caption (as before issue 12's
                length groups, models/text_encoder.py length_groups)

``--attention`` adds the preset with ``attention: default`` (PyTorch's own
choice: the fused flash kernel on CPU) and with ``attention: math``, to show
what the attention backward costs. ``--similarity`` adds the preset with the
SequenceSimilarity's ``attention`` score instead of ``temporal`` (the
monotonic alignment) and with no sequence similarity (the global cosine only,
``loss.use_sequence_similarity false``). The variants take turns within each round
(the machine's noise hits all alike); the median over every round's steps is
printed, with its ratio to the preset's.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from families import load_family  # noqa: E402
from training.accumulation import ModelAndLoss  # noqa: E402
from training.config import load_config  # noqa: E402
from training.precision import autocast as make_autocast, resolve_precision  # noqa: E402

VARIANTS = {"before": ["--model.text.dropout", "0.1"], "preset": [], "one length group": [],
            "last 1": ["--model.text.unfreeze_last_n", "1"],
            "frozen": ["--model.text.unfreeze_last_n", "0"]}


def build(fam, extra, every_swap, n_batches, batch=64, length_buckets=None, attention="auto"):
    cfg = load_config(["--family", "radar", "--preset", "quick"] + extra)
    cfg["precision"], _ = resolve_precision(cfg["precision"], torch.device("cpu"))
    fam.prepare_data(cfg)
    ds = fam.build_datasets(cfg)["train"]
    torch.manual_seed(0)
    m = ModelAndLoss(fam.build_model(cfg), fam.build_criterion(cfg, 0, 1)).train()
    if every_swap:   # what CLIPModel.forward did before issue 12's change
        m.model.encode_swapped = lambda b, out, model=m.model: model.encode_text(b["swapped_caption"], "swap")
    if length_buckets is not None:
        m.model.text_encoder.length_buckets = length_buckets
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    autocast = make_autocast(cfg["precision"], torch.device("cpu"), attention)
    batches = [fam.collate([ds[i] for i in range(k * batch, (k + 1) * batch)]) for k in range(n_batches)]
    return m, opt, autocast, batches, cfg["precision"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--attention", action="store_true")
    ap.add_argument("--similarity", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fam = load_family("radar")
    variants = dict(VARIANTS)
    if args.attention:
        variants["preset, default attention"] = []
        variants["preset, math attention"] = []
    if args.similarity:
        variants["attention similarity"] = ["--loss.sequence_similarity_type", "attention"]
        variants["global only"] = ["--loss.use_sequence_similarity", "false"]
    runs = {}
    for name, extra in variants.items():
        m, opt, autocast, batches, precision = build(
            fam, extra, name == "before", args.batches,
            length_buckets=1 if name in ("before", "one length group") else None,
            attention="math" if "math" in name else "default" if name in ("before", "preset, default attention")
            else "auto")

        def step(b, m=m, opt=opt, autocast=autocast):
            with autocast():
                loss, _ = m(b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        for b in batches:   # warm-up: the caches hold every caption of these batches
            step(b)
        runs[name] = (step, batches)
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, (step, batches) in runs.items():
            for b in batches:
                t0 = time.perf_counter()
                step(b)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["preset"])
    print(f"radar quick preset, batch 64, {precision}, {args.threads} threads: ms per training step, "
          f"median of {args.rounds} rounds x {args.batches} batches")
    for name, v in times.items():
        print(f"  {name:24s} {statistics.median(v) * 1000:8.1f}   x{statistics.median(v) / base:.2f} the preset")


if __name__ == "__main__":
    main()
