"""Stage 1: contrastive pretraining of any family, in one explicit loop.

    python train_stage1.py --family radar --preset quick
    torchrun --nproc_per_node=4 train_stage1.py --family radar --batch-size 64
    python train_stage1.py --family radar --name myrun --resume latest

Every key of configs/<family>.yaml and of training/config.py is a flag
(``--batch-size 32``, ``--model.embed_dim 128``); unknown keys are refused.
A run lives in logs/<name>/: checkpoints/, tensorboard/, config.yaml,
results.jsonl.
"""
import math
import os
import signal
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from families import load_family
from training import checkpoint as ckpt_io
from training.accumulation import ModelAndLoss, forward_backward
from training.config import ConfigError, dump, load_config
from training.data import ResumableDistributedSampler, to_device
from training.distributed import all_reduce_max, all_reduce_mean, barrier, cleanup, init_distributed
from training.logger import RunLogger, peak_memory_mb, to_float
from training.optim import build_optimizer, build_scheduler
from training.precision import autocast as make_autocast, grad_scaler, resolve_precision
from training.resources import apply_thread_budget

LOG_100 = math.log(100.0)


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row (``max_nonfinite``)."""


def run_name(cfg):
    return cfg["name"] or f"{cfg['family']}-{cfg['preset'] or 'default'}-seed{cfg['seed']}"


def config_diff(old, new, path=""):
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_diff(a, b, f"{path}{k}.")
        elif a != b and k not in ("resume",):
            keys.append(f"{path}{k}")
    return keys


def make_loader(dataset, collate, cfg, info, micro_bs, shuffle, sampler=None):
    workers = int(cfg["workers"])
    kwargs = dict(num_workers=workers, collate_fn=collate,
                  pin_memory=bool(cfg["pin_memory"]) and info.device.type == "cuda")
    if workers > 0:
        kwargs["prefetch_factor"] = int(cfg["prefetch_factor"])
        kwargs["worker_init_fn"] = _seed_worker
    if sampler is None:
        return DataLoader(dataset, batch_size=micro_bs, shuffle=False, drop_last=False, **kwargs)
    return DataLoader(dataset, batch_size=micro_bs, sampler=sampler, drop_last=True,
                      generator=torch.Generator().manual_seed(cfg["seed"]), **kwargs)


def _seed_worker(worker_id):
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    import random
    random.seed(s)


def clamp_logit_scale(criterion):
    with torch.no_grad():
        for name, p in criterion.named_parameters():
            if name.endswith("logit_scale"):
                p.clamp_(0, LOG_100)


def criterion_scalars(criterion):
    out = {}
    for name, p in criterion.named_parameters():
        if name.endswith("logit_scale") and p.numel() == 1:
            out[f"train/{name}"] = p.exp().item()
        elif name.endswith("logit_bias") and p.numel() == 1:
            out[f"train/{name}"] = p.item()
    return out


@torch.no_grad()
def validate(family, module, cfg, datasets, info, step, epoch, logger, run_dir):
    """Validation loss over the val split and the family's metrics (rank 0)."""
    model = module.model
    was_training = model.training
    model.eval()
    rng = ckpt_io.rng_state()  # validation must not shift the training RNG stream
    criterion = family.build_criterion(cfg, 0, 1).to(info.device)
    criterion.load_state_dict(module.criterion.state_dict())
    criterion.eval()
    loader = make_loader(datasets["val"], family.collate, cfg, info, cfg["batch_size"], False)
    autocast = make_autocast(cfg["precision"], info.device)
    total, n = 0.0, 0
    for batch in loader:
        batch = to_device(batch, info.device)
        with autocast():
            loss, _ = criterion(model(batch), batch, epoch)
        bs = len(next(v for v in batch.values() if hasattr(v, "__len__")))
        total += to_float(loss) * bs
        n += bs
    metrics = {"loss": total / max(n, 1)}
    metrics.update(family.evaluate(model, criterion, datasets["val"], cfg, info.device,
                                   writer=logger.writer, step=step))
    metrics = {f"val/{k}": float(v) for k, v in metrics.items()}
    logger.scalars(metrics, step)
    logger.result({"step": step, "epoch": epoch, "split": "val", **metrics})
    ckpt_io.set_rng_state(rng)
    model.train(was_training)
    return metrics


def main(argv=None):
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    info = init_distributed(cfg["device"], cfg["dist_backend"])
    cfg["precision"], why_precision = resolve_precision(cfg["precision"], info.device)
    threads_line = apply_thread_budget(cfg)
    if info.is_main:
        print(f"precision: {cfg['precision']} ({why_precision})\n{threads_line}")
    family = load_family(cfg["family"])
    run_dir = os.path.join(cfg["logs"], run_name(cfg))
    ckpt_dir = os.path.join(run_dir, "checkpoints")

    # --- resume: the checkpoint's config wins for everything but the stopping rule
    resume_state = None
    if cfg["resume"]:
        path = ckpt_io.find_resume(cfg["resume"], run_dir)
        if path is not None:
            resume_state = ckpt_io.load_checkpoint(path)
            if info.is_main:
                print(f"resuming from {path} (step {resume_state['step']})")
                changed = config_diff(resume_state["config"], cfg)
                if changed:
                    print("  config differs from the checkpoint's in: " + ", ".join(changed))
        elif info.is_main:
            print(f"--resume latest: no checkpoint in {ckpt_dir}, starting fresh")

    torch.manual_seed(cfg["seed"] + info.rank)
    np.random.seed(cfg["seed"] + info.rank)
    import random
    random.seed(cfg["seed"] + info.rank)

    # --- data
    if info.local_rank == 0:
        family.prepare_data(cfg)
    barrier(info)
    datasets = family.build_datasets(cfg)
    accum = int(cfg["accum_freq"])
    if cfg["batch_size"] % accum:
        raise ConfigError(f"batch_size {cfg['batch_size']} is not divisible by accum_freq {accum}")
    micro_bs = cfg["batch_size"] // accum
    sampler = ResumableDistributedSampler(datasets["train"], info.world_size, info.rank,
                                          shuffle=True, seed=cfg["seed"])
    steps_per_epoch = sampler.num_samples // micro_bs // accum
    if steps_per_epoch == 0:
        raise ConfigError(f"train split has {len(datasets['train'])} items: fewer than one "
                          f"step of batch_size {cfg['batch_size']} x {info.world_size} ranks")
    total_steps = cfg["epochs"] * steps_per_epoch
    if cfg["max_steps"]:
        total_steps = min(total_steps, int(cfg["max_steps"]))

    # --- model, criterion, optimizer
    model = family.build_model(cfg).to(info.device)
    criterion = family.build_criterion(cfg, info.rank, info.world_size).to(info.device)
    if cfg["grad_checkpointing"]:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError(f"family {cfg['family']}: model has no set_grad_checkpointing")
        model.set_grad_checkpointing(True)
    module = ModelAndLoss(model, criterion)
    optimizer, _ = build_optimizer({"model": model, "criterion": criterion}, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    scaler = grad_scaler(cfg["precision"], info.device)
    autocast = make_autocast(cfg["precision"], info.device)

    step, epoch, batch_in_epoch = 0, 0, 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        criterion.load_state_dict(resume_state["criterion"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        step, epoch = resume_state["step"], resume_state["epoch"]
        batch_in_epoch = resume_state["data_position"]["batch_in_epoch"]
        rngs = resume_state["rng"]
        if len(rngs) != info.world_size:
            raise RuntimeError(f"checkpoint was written by {len(rngs)} ranks, this run has "
                               f"{info.world_size}: resume with the same world size")
        ckpt_io.set_rng_state(rngs[info.rank])
    ddp = module
    if info.distributed:
        ddp = DDP(module, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                  find_unused_parameters=bool(cfg.get("ddp_find_unused", False)))

    # --- logging and checkpoints
    logger = RunLogger(run_dir, enabled=info.is_main)
    manager = ckpt_io.CheckpointManager(ckpt_dir, cfg["keep_last"], cfg["keep_best"],
                                        cfg["monitor_mode"]) if info.is_main else None
    if info.is_main:
        dump(cfg, os.path.join(run_dir, "config.yaml"))
        print(f"run {run_dir}: {len(datasets['train'])} train items, {steps_per_epoch} steps/epoch, "
              f"{total_steps} steps, batch {cfg['batch_size']} x {info.world_size} ranks "
              f"(micro-batch {micro_bs}, accum {accum}), {cfg['precision']}, {info.device}")
    commit = ckpt_io.git_commit()

    def save(metric=None):
        import torch.distributed as dist
        rng = ckpt_io.rng_state()
        rngs = [None] * info.world_size
        if info.distributed:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if info.is_main:
            state = {"model": model.state_dict(), "criterion": criterion.state_dict(),
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch,
                     "data_position": {"epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                       "micro_batch_size": micro_bs, "accum_freq": accum},
                     "rng": rngs, "config": cfg, "git_commit": commit,
                     "world_size": info.world_size}
            manager.save(state, step, metric)
        barrier(info)

    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)

    # --- the loop
    nonfinite_in_row, nonfinite_total = 0, 0
    model.train()
    criterion.train()
    bar = tqdm(total=total_steps, initial=step, disable=not info.is_main, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    window = {"data": 0.0, "step": 0.0, "samples": 0}
    last_val = None
    stop_agreed = False
    while step < total_steps and not stop_agreed:
        sampler.set_epoch(epoch, start=batch_in_epoch * micro_bs * accum)
        for ds in datasets.values():
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)
        it = iter(make_loader(datasets["train"], family.collate, cfg, info, micro_bs, True, sampler))
        while batch_in_epoch < steps_per_epoch and step < total_steps:
            t0 = time.perf_counter()
            micro = [to_device(next(it), info.device) for _ in range(accum)]
            t_data = time.perf_counter() - t0

            optimizer.zero_grad(set_to_none=True)
            loss, logs = forward_backward(ddp, module, micro, epoch, autocast, scaler, info.device)
            scaler.unscale_(optimizer)
            max_norm = cfg["grad_clip_norm"] or float("inf")
            gnorm = torch.nn.utils.clip_grad_norm_(
                [p for p in module.parameters() if p.requires_grad], max_norm)
            finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(gnorm))
            # one collective per step: every rank must agree to skip, and to stop
            # (a stop seen by one rank only would deadlock the final save)
            bad, stopping = all_reduce_max([0.0 if finite else 1.0,
                                            1.0 if stop["signal"] is not None else 0.0], info)
            finite, stop_agreed = bad == 0.0, stopping > 0
            if stop_agreed:
                stop["signal"] = stop["signal"] or signal.SIGTERM
            batch_in_epoch += 1
            if finite or scaler.is_enabled() and bool(torch.isfinite(loss)):
                # With fp16 the scaler itself skips overflowing steps and lowers its scale.
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                clamp_logit_scale(criterion)
                step += 1
                nonfinite_in_row = 0
                bar.update(1)
            else:
                nonfinite_in_row += 1
                nonfinite_total += 1
                optimizer.zero_grad(set_to_none=True)
                if info.is_main:
                    logger.scalars({"train/nonfinite_steps": nonfinite_total}, step)
                    tqdm.write(f"step {step}: non-finite loss or gradient, update skipped "
                               f"({nonfinite_in_row} in a row)")
                if nonfinite_in_row >= cfg["max_nonfinite"]:
                    raise NonFiniteError(
                        f"{nonfinite_in_row} non-finite steps in a row at step {step} "
                        f"(max_nonfinite={cfg['max_nonfinite']}); stopping. The last good "
                        f"checkpoint in {ckpt_dir} is intact: lower --lr, try --grad-clip-norm "
                        f"or --precision fp32, then --resume latest")
                if stop_agreed:
                    break
                continue

            t_step = time.perf_counter() - t0
            window["data"] += t_data
            window["step"] += t_step
            window["samples"] += cfg["batch_size"] * info.world_size
            if step % cfg["log_every"] == 0 or step == total_steps:
                loss_mean = all_reduce_mean(to_float(loss), info)
                scalars = {"train/loss": loss_mean, "train/grad_norm": to_float(gnorm),
                           "train/samples_per_s": window["samples"] / window["step"],
                           "train/data_wait_share": window["data"] / window["step"],
                           "train/peak_memory_mb": peak_memory_mb(info.device),
                           "train/epoch": epoch + batch_in_epoch / steps_per_epoch}
                scalars.update({f"train/{k}": to_float(v) for k, v in logs.items()})
                scalars.update(criterion_scalars(criterion))
                for i, g in enumerate(optimizer.param_groups):
                    scalars[f"lr/group{i}_x{g['lr_mult']:g}"] = g["lr"]
                if info.is_main:
                    logger.scalars(scalars, step)
                    bar.set_postfix(loss=f"{loss_mean:.4f}",
                                    sps=f"{scalars['train/samples_per_s']:.1f}",
                                    wait=f"{scalars['train/data_wait_share']:.0%}")
                window = {"data": 0.0, "step": 0.0, "samples": 0}
            if cfg["save_every"] and step % cfg["save_every"] == 0 and step < total_steps:
                save()
            if stop_agreed:
                break
        if stop_agreed:
            break
        if batch_in_epoch >= steps_per_epoch:
            epoch += 1
            batch_in_epoch = 0
            metric = None
            if cfg["val_every"] and (epoch % cfg["val_every"] == 0 or step >= total_steps):
                if info.is_main:
                    last_val = validate(family, module, cfg, datasets, info, step, epoch,
                                        logger, run_dir)
                    if cfg["monitor"] not in last_val:
                        raise ConfigError(f"monitor: {cfg['monitor']!r} is not among the "
                                          f"validation metrics {sorted(last_val)}")
                    metric = last_val[cfg["monitor"]]
                barrier(info)
            save(metric)
    if stop_agreed:
        save()
        if info.is_main:
            print(f"signal {stop['signal']}: saved step {step} to {ckpt_dir}, exiting")
    elif step >= total_steps and batch_in_epoch != 0:
        # stopped by max_steps inside an epoch: validate and save where we are
        metric = None
        if cfg["val_every"] and info.is_main:
            last_val = validate(family, module, cfg, datasets, info, step, epoch, logger, run_dir)
            metric = last_val.get(cfg["monitor"])
        barrier(info)
        save(metric)
    bar.close()
    logger.close()
    if info.is_main:
        print(f"done: step {step}, epoch {epoch}, checkpoints in {ckpt_dir}")
        if last_val:
            print("  ".join(f"{k}={v:.4f}" for k, v in sorted(last_val.items())))
    cleanup(info)
    return run_dir


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, NonFiniteError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
