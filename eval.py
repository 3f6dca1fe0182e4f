"""Evaluate a stage-1 checkpoint on a whole split (default: test).

    python eval.py --checkpoint logs/<name>/checkpoints/latest.pt --out DIR
    python eval.py --checkpoint ... --out DIR --split val --data.root /my/data

Rebuilds the family's model and criterion from the checkpoint's own config
and state dicts (training/state.py). The command line may change any key
but the architecture's (``model.*``, ``loss.*``: the weights fix them), e.g.
``--data.root`` to point at another copy of the data or ``--precision``.
Calls the family's ``evaluate``, writes DIR/metrics.json (flat keys), figures
and a TensorBoard log in DIR, and prints a table.
"""
import argparse
import json
import os
import sys

import torch

from data.cache import UserDataError
from families import load_family
from training.checkpoint import load_checkpoint
from training.config import ConfigError, parse_cli, set_dotted
from training.precision import resolve_precision
from training.resources import apply_thread_budget
from training.state import restore_state


def load_stage1(checkpoint, overrides=(), device="cpu"):
    """(family, cfg, model, criterion) from a checkpoint, weights loaded."""
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    for key, value in overrides:
        if key.split(".")[0] in ("model", "loss"):
            raise ConfigError(f"--{key}: the checkpoint {checkpoint} fixes the architecture "
                              f"(model.*, loss.*); its weights would not fit another one")
        set_dotted(cfg, key, value)
    family = load_family(cfg["family"])
    model = family.build_model(cfg)
    criterion = family.build_criterion(cfg, 0, 1)
    restore_state({"model": model, "criterion": criterion}, ckpt, checkpoint)
    return family, cfg, model.to(device).eval(), criterion.to(device).eval(), ckpt


def print_table(metrics, title):
    width = max(len(k) for k in metrics) if metrics else 10
    print(title)
    for k in sorted(metrics):
        v = metrics[k]
        print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--device", default="auto")
    args, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    family, cfg, model, criterion, ckpt = load_stage1(args.checkpoint, parse_cli(rest), device)
    step = ckpt["train_state"]["step"]
    cfg["precision"], why_precision = resolve_precision(cfg.get("precision", "auto"), device)
    print(f"precision: {cfg['precision']} ({why_precision})\n{apply_thread_budget(cfg)}")
    family.prepare_data(cfg)  # regenerates the same data if the cache was removed
    dataset = family.build_datasets(cfg)[args.split]
    os.makedirs(args.out, exist_ok=True)
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(os.path.join(args.out, "tensorboard"))
    with torch.no_grad():
        metrics = family.evaluate(model, criterion, dataset, cfg, device, out_dir=args.out,
                                  writer=writer, step=step)
    writer.close()
    metrics = {k: float(v) if isinstance(v, (int, float)) or torch.is_tensor(v) else v
               for k, v in metrics.items()}
    meta = {"checkpoint": os.path.abspath(args.checkpoint), "split": args.split,
            "step": step, "family": cfg["family"], "git_commit": ckpt.get("git_commit")}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, sort_keys=True)
    with open(os.path.join(args.out, "eval_info.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print_table(metrics, f"{cfg['family']} {args.split} split, step {step}: "
                         f"{os.path.join(args.out, 'metrics.json')}")
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError, KeyError, RuntimeError, UserDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
