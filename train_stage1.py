"""Stage 1: contrastive pretraining of any family, in one explicit loop.

    python train_stage1.py --family radar --preset quick
    torchrun --nproc_per_node=4 train_stage1.py --family radar --batch-size 64
    python train_stage1.py --family radar --name myrun --resume latest

Every key of configs/<family>.yaml and of training/config.py is a flag
(``--batch-size 32``, ``--model.embed_dim 128``); unknown keys are refused.
A run lives in logs/<name>/: checkpoints/, tensorboard/, config.yaml,
results.jsonl. The file reads top to bottom: set-up, data, model, the loop
around ``train_step``, validation and saving; ``main`` strings them together.
"""
import math
import os
import signal
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.cache import UserDataError
from families import load_family
from models.towers import tower_summary
from training import checkpoint as ckpt_io
from training.accumulation import ModelAndLoss, forward_backward
from training.compile import compile_towers
from training.config import ConfigError, cli_keys, dump, load_config
from training.data import ResumableDistributedSampler, to_device
from training.distributed import all_reduce_mean, barrier, cleanup, init_distributed
from training.logger import RunLogger, peak_memory_mb, to_float
from training.optim import build_optimizer, build_scheduler, sync_lr
from training.precision import autocast as make_autocast, grad_scaler, resolve_attention, resolve_precision
from training.resources import apply_thread_budget
from training.state import TrainState, restore_state, resume_config, save_state, seed_everything, \
    seed_micro_batch
from training.step import NonFiniteError, check_nonfinite, optimizer_step

LOG_100 = math.log(100.0)


# --- set-up -------------------------------------------------------------------------------

def run_name(cfg):
    return cfg["name"] or f"{cfg['family']}-{cfg['preset'] or 'default'}-seed{cfg['seed']}"


def setup(argv):
    """(cfg, info, run_dir, checkpoint or None): the config (the checkpoint's on
    resume, see training/state.py), distributed init, precision and threads."""
    cfg = load_config(argv)
    info = init_distributed(cfg["device"], cfg["dist_backend"])
    run_dir = os.path.join(cfg["logs"], run_name(cfg))
    ckpt = None
    if cfg["resume"]:
        path = ckpt_io.find_resume(cfg["resume"], run_dir)
        if path is None:
            say(info, f"--resume {cfg['resume']}: no checkpoint in {run_dir}/checkpoints, "
                      f"starting fresh")
        else:
            ckpt = ckpt_io.load_checkpoint(path)
            cfg, lines = resume_config(ckpt["config"], cfg, cli_keys(argv))
            say(info, f"resuming from {path} (step {ckpt['train_state']['step']})", *lines)
    cfg["precision"], why = resolve_precision(cfg["precision"], info.device)
    kernel, why_kernel = resolve_attention(cfg.get("attention", "auto"), cfg["precision"], info.device)
    say(info, f"precision: {cfg['precision']} ({why}); attention kernel: {kernel} ({why_kernel})",
        apply_thread_budget(cfg))
    seed_everything(cfg["seed"])  # the same initial weights on every rank
    return cfg, info, run_dir, ckpt


def say(info, *lines):
    if info.is_main:
        for line in lines:
            print(line, flush=True)


def install_stop_handlers():
    """SIGTERM and SIGINT (Ctrl-C) ask the loop to save and exit after the
    current step; a second signal exits at once (KeyboardInterrupt)."""
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:
            raise KeyboardInterrupt(f"second signal {signum}: exiting without saving")
        stop["signal"] = signum
        print(f"signal {signum}: saving after this step (again to exit at once)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


# --- data ---------------------------------------------------------------------------------

def build_data(family, cfg, info):
    """(datasets, sampler, micro-batch size, steps per epoch, total steps)."""
    if info.local_rank == 0:
        family.prepare_data(cfg)
    barrier(info)
    datasets = family.build_datasets(cfg)
    if cfg["batch_size"] % cfg["accum_freq"]:
        raise ConfigError(f"batch_size {cfg['batch_size']} is not divisible by "
                          f"accum_freq {cfg['accum_freq']}")
    sampler = ResumableDistributedSampler(datasets["train"], info.world_size, info.rank,
                                          shuffle=True, seed=cfg["seed"],
                                          batch_size=cfg["batch_size"])
    if sampler.steps_per_epoch == 0:
        raise ConfigError(f"train split has {len(datasets['train'])} items: fewer than one "
                          f"step of batch_size {cfg['batch_size']} x {info.world_size} ranks")
    total_steps = cfg["epochs"] * sampler.steps_per_epoch
    if cfg["max_steps"]:
        total_steps = min(total_steps, cfg["max_steps"])
    return datasets, sampler, cfg["batch_size"] // cfg["accum_freq"], total_steps


def make_loader(dataset, collate, cfg, info, batch_size, sampler=None):
    """In order (validation) without a sampler; else in the sampler's order."""
    kwargs = dict(num_workers=cfg["workers"], collate_fn=collate, batch_size=batch_size,
                  pin_memory=cfg["pin_memory"] and info.device.type == "cuda")
    if cfg["workers"] > 0:
        kwargs.update(prefetch_factor=cfg["prefetch_factor"], worker_init_fn=seed_worker)
    return DataLoader(dataset, sampler=sampler, shuffle=False, drop_last=sampler is not None,
                      **kwargs)


def seed_worker(worker_id):
    """numpy and random in a worker from torch's per-worker seed (torch seeds
    only itself and random); per-item randomness should use item_rng anyway."""
    seed_everything(torch.initial_seed() % 2**32)


def epoch_steps(datasets, collate, sampler, state, cfg, info, micro_bs):
    """The rest of the current epoch, one list of ``accum_freq`` micro-batches a step."""
    sampler.set_epoch(state.epoch, start_step=state.batch_in_epoch)
    for ds in datasets.values():
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(state.epoch)
    it = iter(make_loader(datasets["train"], collate, cfg, info, micro_bs, sampler))
    for _ in range(state.batch_in_epoch, sampler.steps_per_epoch):
        yield [to_device(next(it), info.device) for _ in range(cfg["accum_freq"])]


# --- model ----------------------------------------------------------------------------------

def build_model(family, cfg, info):
    """(model, criterion, ModelAndLoss, its DDP wrapper or itself)."""
    model = family.build_model(cfg).to(info.device)
    criterion = family.build_criterion(cfg, info.rank, info.world_size).to(info.device)
    for line in tower_summary({"model": model}):
        say(info, line)
    if cfg["grad_checkpointing"]:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError(f"family {cfg['family']}: model has no set_grad_checkpointing")
        model.set_grad_checkpointing(True)
    if cfg["torchcompile"]:
        # Before DDP, on the inner towers: PyTorch's "Where to apply torch.compile?"
        # recommends compiling the module DDP wraps, not the wrapper (Dynamo does not
        # trace DDP's hooks well). The towers' first traced forward with grad runs
        # inside DDP's forward, which Dynamo sees, so its DDPOptimizer still splits
        # the graphs at DDP's bucket boundaries and the all-reduce overlaps backward.
        model.compiled_towers = compile_towers(model, cfg["torchcompile_backend"],
                                               device=info.device)
        say(info, f"torch.compile ({cfg['torchcompile_backend']}): each tower at its first "
                  f"call, or its parts if it is called with captions/keys (training/compile.py)")
    module = ModelAndLoss(model, criterion)
    ddp = module
    if info.distributed:
        ddp = DDP(module, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                  find_unused_parameters=cfg["ddp_find_unused"])
    return model, criterion, module, ddp


def clamp_logit_scale(criterion):
    with torch.no_grad():
        for name, p in criterion.named_parameters():
            if name.endswith("logit_scale"):
                p.clamp_(0, LOG_100)


# --- one step -------------------------------------------------------------------------------

def train_step(micro, ddp, module, optimizer, scheduler, scaler, autocast, state, cfg, info,
               steps_per_epoch, stop_requested):
    """Forward/backward over the step's micro-batches, then the optimizer step
    (on every rank, or on none). Returns (StepOutcome, loss, logs)."""
    position = state.epoch * steps_per_epoch + state.batch_in_epoch  # the global batch's index

    def reseed(j):  # slice j of this rank's share: the same stream on any number of ranks
        seed_micro_batch(cfg["seed"], position, info.rank * cfg["accum_freq"] + j)

    optimizer.zero_grad(set_to_none=True)
    loss, logs = forward_backward(ddp, module, micro, state.epoch, autocast, scaler, info.device,
                                  reseed)
    params = [p for p in module.parameters() if p.requires_grad]
    outcome = optimizer_step(optimizer, scaler, scheduler, params, loss, state, info,
                             cfg["grad_clip_norm"], stop_requested)
    state.batch_in_epoch += 1
    if outcome.stepped:
        clamp_logit_scale(module.criterion)
    return outcome, loss, logs


def log_step(logger, bar, window, outcome, loss, logs, criterion, optimizer, state, info,
             steps_per_epoch):
    """Mean loss over ranks and the step's scalars to TensorBoard and the bar."""
    loss_mean = all_reduce_mean(to_float(loss), info)
    scalars = {"train/loss": loss_mean, "train/grad_norm": to_float(outcome.grad_norm),
               "train/samples_per_s": window["samples"] / window["step"],
               "train/data_wait_share": window["data"] / window["step"],
               "train/peak_memory_mb": peak_memory_mb(info.device),
               "train/epoch": state.epoch + state.batch_in_epoch / steps_per_epoch}
    scalars.update({f"train/{k}": to_float(v) for k, v in logs.items()})
    for name, p in criterion.named_parameters():
        if name.endswith("logit_scale") and p.numel() == 1:
            scalars[f"train/{name}"] = p.exp().item()
        elif name.endswith("logit_bias") and p.numel() == 1:
            scalars[f"train/{name}"] = p.item()
    for i, g in enumerate(optimizer.param_groups):
        scalars[f"lr/group{i}_x{g['lr_mult']:g}"] = g["lr"]
    if info.is_main:
        logger.scalars(scalars, state.step)
        bar.set_postfix(loss=f"{loss_mean:.4f}", sps=f"{scalars['train/samples_per_s']:.1f}",
                        wait=f"{scalars['train/data_wait_share']:.0%}")


# --- validation and saving ------------------------------------------------------------------

@torch.no_grad()
def validate(family, module, cfg, datasets, info, state, logger):
    """Validation loss over the val split and the family's metrics (rank 0).
    The next step reseeds every stream, so this draws nothing from training's."""
    model = module.model
    was_training = model.training
    model.eval()
    criterion = family.build_criterion(cfg, 0, 1).to(info.device)
    criterion.load_state_dict(module.criterion.state_dict())
    criterion.eval()
    autocast = make_autocast(cfg["precision"], info.device, cfg.get("attention", "auto"))
    total, n = 0.0, 0
    for batch in make_loader(datasets["val"], family.collate, cfg, info, cfg["batch_size"]):
        batch = to_device(batch, info.device)
        with autocast():
            loss, _ = criterion(model(batch), batch, state.epoch)
        bs = len(next(v for v in batch.values() if hasattr(v, "__len__")))
        total += to_float(loss) * bs
        n += bs
    metrics = {"loss": total / max(n, 1)}
    metrics.update(family.evaluate(model, criterion, datasets["val"], cfg, info.device,
                                   writer=logger.writer, step=state.step))
    metrics = {f"val/{k}": float(v) for k, v in metrics.items()}
    if cfg["monitor"] not in metrics:
        raise ConfigError(f"monitor: {cfg['monitor']!r} is not among the validation metrics "
                          f"{sorted(metrics)}")
    logger.scalars(metrics, state.step)
    logger.result({"step": state.step, "epoch": state.epoch, "split": "val", **metrics})
    model.train(was_training)
    return metrics


def validate_everywhere(family, module, cfg, datasets, info, state, logger):
    """Rank 0 validates, the others wait; returns (metrics or None, monitored value)."""
    metrics = None
    if cfg["val_every"] and info.is_main:
        metrics = validate(family, module, cfg, datasets, info, state, logger)
    barrier(info)
    return metrics, (metrics or {}).get(cfg["monitor"])


def save_checkpoint(manager, objects, cfg, info, commit, metric=None):
    """Every named object's state_dict (rank 0 writes: the model is replicated)."""
    if info.is_main:
        state = save_state(objects, config=cfg, git_commit=commit, world_size=info.world_size)
        manager.save(state, objects["train_state"].step, metric)
    barrier(info)


# --- main -----------------------------------------------------------------------------------

def main(argv=None):
    cfg, info, run_dir, ckpt = setup(sys.argv[1:] if argv is None else argv)
    family = load_family(cfg["family"])
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    datasets, sampler, micro_bs, total_steps = build_data(family, cfg, info)
    model, criterion, module, ddp = build_model(family, cfg, info)
    optimizer, _ = build_optimizer({"model": model, "criterion": criterion}, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    scaler = grad_scaler(cfg["precision"], info.device)
    autocast = make_autocast(cfg["precision"], info.device, cfg.get("attention", "auto"))
    state = TrainState()
    objects = {"model": model, "criterion": criterion, "optimizer": optimizer,
               "scheduler": scheduler, "scaler": scaler, "sampler": sampler, "train_state": state}
    if ckpt is not None:
        try:
            restore_state(objects, ckpt)
        except ValueError as e:  # the sampler's order check
            raise ConfigError(f"resume: {e}") from None
        sync_lr(scheduler)  # the schedule may be longer or shorter than the checkpoint's

    logger = RunLogger(run_dir, enabled=info.is_main)
    manager = ckpt_io.CheckpointManager(ckpt_dir, cfg["keep_last"], cfg["keep_best"],
                                        cfg["monitor_mode"]) if info.is_main else None
    if info.is_main:
        dump(cfg, os.path.join(run_dir, "config.yaml"))
    say(info, f"run {run_dir}: {len(datasets['train'])} train items, {sampler.steps_per_epoch} "
              f"steps/epoch, {total_steps} steps, batch {cfg['batch_size']} x {info.world_size} "
              f"ranks (micro-batch {micro_bs}, accum {cfg['accum_freq']}), {info.device}")
    commit = ckpt_io.git_commit()
    stop = install_stop_handlers()

    model.train()
    criterion.train()
    bar = tqdm(total=total_steps, initial=state.step, disable=not info.is_main,
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)
    window = {"data": 0.0, "step": 0.0, "samples": 0}
    last_val, stopping, first_step = None, False, True
    while state.step < total_steps and not stopping:
        steps = epoch_steps(datasets, family.collate, sampler, state, cfg, info, micro_bs)
        t0 = time.perf_counter()
        for micro in steps:
            t_data = time.perf_counter() - t0
            outcome, loss, logs = train_step(micro, ddp, module, optimizer, scheduler, scaler,
                                             autocast, state, cfg, info, sampler.steps_per_epoch,
                                             stop["signal"] is not None)
            stopping = outcome.stop
            if cfg["torchcompile"] and first_step:
                say(info, f"torch.compile: compiled {', '.join(model.compiled_towers) or 'nothing'}"
                          f"; first step {time.perf_counter() - t0:.1f} s with compilation")
                first_step = False
            if not outcome.stepped:
                if info.is_main:
                    logger.scalars({"train/nonfinite_steps": state.nonfinite_total}, state.step)
                    tqdm.write(f"step {state.step}: non-finite loss or gradient, update skipped "
                               f"({state.nonfinite_in_row} in a row)")
                check_nonfinite(state, cfg["max_nonfinite"], ckpt_dir)
            else:
                bar.update(1)
                window["data"] += t_data
                window["step"] += time.perf_counter() - t0
                window["samples"] += cfg["batch_size"] * info.world_size
                if state.step % cfg["log_every"] == 0 or state.step == total_steps:
                    log_step(logger, bar, window, outcome, loss, logs, criterion, optimizer,
                             state, info, sampler.steps_per_epoch)
                    window = {"data": 0.0, "step": 0.0, "samples": 0}
                if cfg["save_every"] and state.step % cfg["save_every"] == 0 \
                        and state.step < total_steps and not stopping:
                    save_checkpoint(manager, objects, cfg, info, commit)
            if stopping or state.step >= total_steps:
                break
            t0 = time.perf_counter()
        if stopping:
            break
        if state.batch_in_epoch >= sampler.steps_per_epoch:  # the epoch is complete
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            metric = None
            if cfg["val_every"] and (state.epoch % cfg["val_every"] == 0
                                     or state.step >= total_steps):
                last_val, metric = validate_everywhere(family, module, cfg, datasets, info,
                                                       state, logger)
            save_checkpoint(manager, objects, cfg, info, commit, metric)
    if stopping:
        save_checkpoint(manager, objects, cfg, info, commit)
        say(info, f"signal {stop['signal'] or 'on another rank'}: saved step {state.step} "
                  f"to {ckpt_dir}, exiting")
    elif state.batch_in_epoch != 0:  # max_steps inside an epoch: validate and save here
        last_val, metric = validate_everywhere(family, module, cfg, datasets, info, state, logger)
        save_checkpoint(manager, objects, cfg, info, commit, metric)
    bar.close()
    logger.close()
    say(info, f"done: step {state.step}, epoch {state.epoch}, checkpoints in {ckpt_dir}")
    if last_val:
        say(info, "  ".join(f"{k}={v:.4f}" for k, v in sorted(last_val.items())))
    cleanup(info)
    return run_dir


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, NonFiniteError, FileNotFoundError, UserDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"interrupted: {e or 'exiting without saving'}", file=sys.stderr)
        sys.exit(130)
