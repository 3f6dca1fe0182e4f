"""Stage 2: supervised training on top of a stage-1 encoder.

    python train_stage2.py --family radar --init logs/<run>/checkpoints/latest.pt --mode linear
    python train_stage2.py --family timesclip --init CKPT --preset quick --mode frozen_then_finetune
    python train_stage2.py --family timesclip --mode scratch --preset quick

Modes: ``scratch`` (same architecture, random init), ``linear`` (stage-1
encoder frozen, head trained), ``finetune`` (everything trained, encoder at
``stage2.encoder_lr_mult`` x lr), ``frozen_then_finetune`` (frozen for
``stage2.frozen_epochs``, then fine-tuned). The family's ``build_stage2``
supplies datasets, model (with its stage-1 ``encoder``), loss and metrics;
this loop owns optimisation: AdamW, OneCycle, AMP, best-on-val checkpoint,
and the test metrics of the best epoch in logs/<name>/metrics.json.
"""
import json
import os
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from families import load_family
from training.checkpoint import atomic_save, load_checkpoint
from training.config import ConfigError, dump, load_config, parse_cli, _set_dotted
from training.data import to_device
from training.logger import RunLogger, to_float
from training.precision import autocast as make_autocast, resolve_precision
from training.resources import apply_thread_budget

MODES = ("scratch", "linear", "finetune", "frozen_then_finetune")
STAGE2_DEFAULTS = {"epochs": 20, "lr": 1.0e-3, "wd": 1.0e-4, "batch_size": 64, "mode": "linear",
                   "encoder_lr_mult": 0.1, "frozen_epochs": 5, "pct_start": 0.1,
                   "weighted_sampling": False, "monitor": "loss", "monitor_mode": "min",
                   "grad_clip_norm": 1.0}


def split_args(argv):
    """Pull --init and --mode out; the rest is the usual config command line."""
    init, mode, rest, i = None, None, [], 0
    while i < len(argv):
        tok = argv[i]
        for flag in ("--init", "--mode"):
            if tok == flag or tok.startswith(flag + "="):
                val = tok.split("=", 1)[1] if "=" in tok else argv[i + 1]
                i += 1 if "=" in tok else 2
                if flag == "--init":
                    init = val
                else:
                    mode = val
                break
        else:
            rest.append(tok)
            i += 1
    return init, mode, rest


def set_encoder_trainable(encoder, trainable):
    if encoder is None:
        return
    for p in encoder.parameters():
        p.requires_grad_(trainable)


def make_optimizer(model, encoder, s2, head_lr, phase_epochs, steps_per_epoch):
    enc_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    enc = [p for p in model.parameters() if p.requires_grad and id(p) in enc_ids]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
    groups = [{"params": rest, "lr": head_lr}]
    if enc:
        groups.append({"params": enc, "lr": s2["lr"] * s2["encoder_lr_mult"]})
    opt = torch.optim.AdamW(groups, weight_decay=s2["wd"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=max(1, phase_epochs * steps_per_epoch),
        pct_start=s2["pct_start"])
    return opt, sched


def main(argv=None):
    init, mode, rest = split_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(rest)
    s2 = dict(STAGE2_DEFAULTS)
    s2.update(cfg.get("stage2") or {})
    mode = mode or s2["mode"]
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {MODES}, got {mode!r}")
    if mode != "scratch" and init is None:
        raise ConfigError(f"--mode {mode} needs --init <stage-1 checkpoint>")
    state = None
    if init is not None:
        ckpt = load_checkpoint(init)
        if ckpt["config"]["family"] != cfg["family"]:
            raise ConfigError(f"{init}: checkpoint is of family {ckpt['config']['family']!r}, "
                              f"not {cfg['family']!r}")
        # The encoder's architecture and the data are the stage-1 run's.
        cli = dict(parse_cli(rest))
        for sec in ("data", "model"):
            cfg[sec] = ckpt["config"][sec]
        for k, v in cli.items():
            if k.split(".")[0] in ("data", "model"):
                _set_dotted(cfg, k, v, "command line")
        state = ckpt["model"] if mode != "scratch" else None
    device = torch.device("cuda" if torch.cuda.is_available() and cfg["device"] != "cpu" else "cpu")
    cfg["precision"], why_precision = resolve_precision(cfg["precision"], device)
    print(f"precision: {cfg['precision']} ({why_precision})\n{apply_thread_budget(cfg)}")
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])

    family = load_family(cfg["family"])
    if not hasattr(family, "build_stage2"):
        raise ConfigError(f"family {cfg['family']!r} has no stage 2")
    family.prepare_data(cfg)
    parts = family.build_stage2(cfg, state, mode)
    model = parts["model"].to(device)
    encoder = parts.get("encoder", getattr(model, "encoder", None))
    datasets, collate = parts["datasets"], parts["collate"]

    name = cfg["name"] or f"{cfg['family']}-stage2-{mode}-seed{cfg['seed']}"
    run_dir = os.path.join(cfg["logs"], name)
    os.makedirs(run_dir, exist_ok=True)
    dump(dict(cfg, stage2=s2, stage2_mode=mode, stage2_init=init), os.path.join(run_dir, "config.yaml"))
    logger = RunLogger(run_dir)

    train_ds = datasets["train"]
    sampler = None
    if s2["weighted_sampling"]:
        w = getattr(train_ds, "sample_weights", None)
        if w is None:
            raise ConfigError("stage2.weighted_sampling: the train dataset has no sample_weights")
        sampler = WeightedRandomSampler(w, num_samples=len(train_ds), replacement=True,
                                        generator=torch.Generator().manual_seed(cfg["seed"]))
    loader = DataLoader(train_ds, batch_size=s2["batch_size"], shuffle=sampler is None,
                        sampler=sampler, drop_last=len(train_ds) > s2["batch_size"],
                        collate_fn=collate, num_workers=cfg["workers"],
                        generator=torch.Generator().manual_seed(cfg["seed"]))
    autocast = make_autocast(cfg["precision"], device)
    steps_per_epoch = len(loader)

    frozen_phase = {"linear": s2["epochs"], "frozen_then_finetune": s2["frozen_epochs"]}.get(mode, 0)
    set_encoder_trainable(encoder, frozen_phase == 0)
    opt, sched = make_optimizer(model, encoder, s2, s2["lr"],
                                frozen_phase or s2["epochs"], steps_per_epoch)
    best, best_metric, step = None, None, 0
    sign = 1 if s2["monitor_mode"] == "min" else -1
    for epoch in range(s2["epochs"]):
        if mode == "frozen_then_finetune" and epoch == frozen_phase:
            # Linear probe, then fine-tune (LP-FT): the trained head continues at
            # the encoder's small lr, so unfreezing does not restart a large warm-up
            # that would undo the probe.
            set_encoder_trainable(encoder, True)
            opt, sched = make_optimizer(model, encoder, s2, s2["lr"] * s2["encoder_lr_mult"],
                                        s2["epochs"] - epoch, steps_per_epoch)
        model.train()
        if encoder is not None and not any(p.requires_grad for p in encoder.parameters()):
            encoder.eval()  # a frozen encoder also keeps its dropout/norm statistics fixed
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        for batch in tqdm(loader, desc=f"stage2 {mode} epoch {epoch}", leave=False, dynamic_ncols=True):
            batch = to_device(batch, device)
            with autocast():
                loss, logs = parts["loss_fn"](model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                           s2["grad_clip_norm"] or float("inf"))
            if torch.isfinite(loss):
                opt.step()
            if sched.last_epoch + 1 < sched.total_steps:
                sched.step()
            step += 1
            logger.scalars({"stage2/loss": to_float(loss), "stage2/lr": opt.param_groups[0]["lr"],
                            **{f"stage2/{k}": to_float(v) for k, v in logs.items()}}, step)
        with torch.no_grad():
            model.eval()
            val = parts["evaluate"](model, datasets["val"], cfg, device)
        logger.scalars({f"stage2_val/{k}": v for k, v in val.items()}, step)
        logger.result({"epoch": epoch, "step": step, "split": "val", **val})
        if s2["monitor"] not in val:
            raise ConfigError(f"stage2.monitor {s2['monitor']!r} not in val metrics {sorted(val)}")
        m = val[s2["monitor"]]
        if best_metric is None or sign * m < sign * best_metric:
            best_metric = m
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            atomic_save({"model": best, "config": cfg, "epoch": epoch, "mode": mode, "init": init},
                        os.path.join(run_dir, "best.pt"))
        print(f"epoch {epoch}: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(val.items())))
    model.load_state_dict(best)
    with torch.no_grad():
        model.eval()
        test = parts["evaluate"](model, datasets["test"], cfg, device, out_dir=run_dir)
    test = {k: float(v) for k, v in test.items()}
    logger.result({"split": "test", "mode": mode, **test})
    logger.close()
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(dict(test, mode=mode, init=init), f, indent=1, sort_keys=True)
    print(f"stage 2 ({mode}) test: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(test.items())))
    return test


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
