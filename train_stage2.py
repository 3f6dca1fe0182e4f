"""Stage 2: supervised training on top of a stage-1 encoder.

    python train_stage2.py --family radar --init logs/<run>/checkpoints/latest.pt --mode linear
    python train_stage2.py --family timesclip --init CKPT --preset quick --mode frozen_then_finetune
    python train_stage2.py --family timesclip --mode scratch --preset quick

Modes: ``scratch`` (same architecture, random init), ``linear`` (stage-1
encoder frozen, head trained), ``finetune`` (everything trained, encoder at
``stage2.encoder_lr_mult`` x lr), ``frozen_then_finetune`` (frozen for
``stage2.frozen_epochs``, then fine-tuned). The family's ``build_stage2``
supplies datasets, model (with its stage-1 ``encoder``), loss and metrics;
this loop owns optimisation: AdamW, OneCycle, the stage-1 optimizer step
(GradScaler under fp16, non-finite steps skipped), checkpoints in
logs/<name>/checkpoints/ as in stage 1 (``best.pt`` by ``stage2.monitor``),
and the test metrics of the best epoch in logs/<name>/metrics.json.

Stage 2 reads ``stage2.*`` (``--stage2.epochs``, ``--stage2.lr``, ...); the
stage-1 flags of the same name are refused here rather than ignored.
``--resume latest`` (or a path) continues after the last saved epoch; the
checkpoint fixes everything but ``STAGE2_MAY_CHANGE`` (the OneCycle schedule
spans ``stage2.epochs``, so that is fixed too). Each epoch reseeds its
shuffle and random streams from (seed, epoch), so a resumed run draws what
the uninterrupted one drew.
"""
import copy
import os
import sys

import torch
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from data.cache import UserDataError
from families import load_family
from models.towers import find_towers
from training.checkpoint import CheckpointManager, find_resume, git_commit, load_checkpoint
from training.compile import compile_towers
from training.config import ConfigError, cli_keys, dump, load_config, parse_cli, set_dotted
from training.data import to_device
from training.distributed import DistInfo
from training.io import atomic_json
from training.logger import RunLogger, to_float
from training.precision import autocast as make_autocast, grad_scaler, resolve_precision
from training.resources import apply_thread_budget
from training.state import TrainState, restore_state, resume_config, save_state, seed_everything
from training.step import NonFiniteError, check_nonfinite, optimizer_step

MODES = ("scratch", "linear", "finetune", "frozen_then_finetune")
# Stage-1 flags whose stage-2 meaning lives under stage2.*, and those stage 2 has no use for.
RENAMED_IN_STAGE2 = ("epochs", "lr", "wd", "batch_size", "grad_clip_norm", "monitor",
                     "monitor_mode")
UNUSED_IN_STAGE2 = ("accum_freq", "warmup", "min_lr_ratio", "lr_multipliers", "beta1", "beta2",
                    "eps", "local_loss", "gather_with_grad", "max_steps", "save_every",
                    "val_every", "grad_checkpointing", "ddp_find_unused", "dist_backend")
STAGE2_MAY_CHANGE = ("log_every", "keep_last", "keep_best", "workers", "threads", "pin_memory",
                     "prefetch_factor", "device", "precision", "torchcompile",
                     "torchcompile_backend", "max_nonfinite", "resume", "logs", "name", "config",
                     "preset", "eval.")


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


def check_stage2_flags(argv):
    """A flag means the same in both stages or is refused here by name."""
    for key in sorted(cli_keys(argv)):
        if key in RENAMED_IN_STAGE2:
            raise ConfigError(f"--{key.replace('_', '-')}: stage 2 reads stage2.{key}; "
                              f"use --stage2.{key}")
        if key in UNUSED_IN_STAGE2:
            raise ConfigError(f"--{key.replace('_', '-')}: stage 2 does not use it "
                              f"(its keys are stage2.*, see training/config.py)")


def run_name(cfg):
    return cfg["name"] or f"{cfg['family']}-stage2-{cfg['stage2']['mode']}-seed{cfg['seed']}"


def take_stage1_data_and_model(cfg, stage1_cfg, rest):
    """The encoder's architecture and the data are the stage-1 run's, unless
    the command line says otherwise (another copy of the data, say)."""
    for sec in ("data", "model"):
        cfg[sec] = copy.deepcopy(stage1_cfg[sec])
    for k, v in parse_cli(rest):
        if k.split(".")[0] in ("data", "model"):
            set_dotted(cfg, k, v)


def setup(argv):
    """(cfg, init path, stage-1 model state or None, device, stage-2 checkpoint or None)."""
    init, mode, rest = split_args(argv)
    check_stage2_flags(rest)
    cfg = load_config(rest)
    s2 = cfg["stage2"]
    given_mode, mode = mode, mode or s2["mode"]
    s2["mode"] = mode
    resume = None
    if cfg["resume"]:
        path = find_resume(cfg["resume"], os.path.join(cfg["logs"], run_name(cfg)))
        if path is None:
            print(f"--resume {cfg['resume']}: no stage-2 checkpoint, starting fresh")
        else:
            resume = load_checkpoint(path)
            # data.* and model.* came from the stage-1 run, not from the YAML
            take_stage1_data_and_model(cfg, resume["config"], rest)
            cli = cli_keys(rest) | ({"stage2.mode"} if given_mode else set())
            cfg, lines = resume_config(resume["config"], cfg, cli, STAGE2_MAY_CHANGE)
            s2, mode, init = cfg["stage2"], cfg["stage2"]["mode"], init or resume["init"]
            print(f"resuming stage 2 from {path} (epoch {resume['train_state']['epoch']})",
                  *lines, sep="\n")
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
        if resume is None:
            take_stage1_data_and_model(cfg, ckpt["config"], rest)
        state = ckpt["model"] if mode != "scratch" else None
    device = torch.device("cuda" if torch.cuda.is_available() and cfg["device"] != "cpu" else "cpu")
    cfg["precision"], why = resolve_precision(cfg["precision"], device)
    print(f"precision: {cfg['precision']} ({why})\n{apply_thread_budget(cfg)}")
    seed_everything(cfg["seed"])
    return cfg, init, state, device, resume


def set_encoder_trainable(encoder, trainable):
    """Unfreeze (or freeze) the stage-1 encoder; a pretrained tower inside it
    keeps its own freeze / unfreeze_last_n settings (model.<tower>.*)."""
    if encoder is None:
        return
    for p in encoder.parameters():
        p.requires_grad_(trainable)
    if trainable:
        for tower in find_towers({"encoder": encoder}).values():
            tower.apply_trainable()


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


def make_train_loader(train_ds, collate, cfg):
    s2 = cfg["stage2"]
    sampler = None
    if s2["weighted_sampling"]:
        w = getattr(train_ds, "sample_weights", None)
        if w is None:
            raise ConfigError("stage2.weighted_sampling: the train dataset has no sample_weights")
        sampler = WeightedRandomSampler(w, num_samples=len(train_ds), replacement=True,
                                        generator=torch.Generator().manual_seed(cfg["seed"]))
    extra = dict(prefetch_factor=cfg["prefetch_factor"]) if cfg["workers"] > 0 else {}
    return DataLoader(train_ds, batch_size=s2["batch_size"], shuffle=sampler is None,
                      sampler=sampler, drop_last=len(train_ds) > s2["batch_size"],
                      collate_fn=collate, num_workers=cfg["workers"],
                      pin_memory=cfg["pin_memory"] and torch.cuda.is_available()
                      and cfg["device"] != "cpu",
                      generator=torch.Generator().manual_seed(cfg["seed"]), **extra)


def seed_epoch(loader, seed, epoch):
    """Epoch ``epoch``'s shuffle and random streams from (seed, epoch) alone."""
    seed_everything(seed * 100003 + epoch)
    for g in {id(x): x for x in (loader.generator, getattr(loader.sampler, "generator", None))
              if x is not None}.values():
        g.manual_seed(seed * 100003 + epoch)


def train_epoch(loader, model, loss_fn, opt, sched, scaler, autocast, state, cfg, device,
                logger, ckpt_dir, desc):
    """One epoch of the stage-1 optimizer step (scaler, agreement, skipping)."""
    info = DistInfo(device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        batch = to_device(batch, device)
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss, logs = loss_fn(model(batch), batch)
        scaler.scale(loss).backward()
        # OneCycle refuses a step past its end: the loop steps it itself
        outcome = optimizer_step(opt, scaler, None, params, loss, state, info,
                                 cfg["stage2"]["grad_clip_norm"])
        if not outcome.stepped:
            tqdm.write(f"stage 2 step {state.step}: non-finite loss or gradient, update skipped")
            check_nonfinite(state, cfg["max_nonfinite"], ckpt_dir)
            continue
        if sched.last_epoch + 1 < sched.total_steps:
            sched.step()
        if state.step % cfg["log_every"] == 0:
            logger.scalars({"stage2/loss": to_float(loss), "stage2/lr": opt.param_groups[0]["lr"],
                            **{f"stage2/{k}": to_float(v) for k, v in logs.items()}}, state.step)


def main(argv=None):
    cfg, init, stage1_state, device, resume = setup(sys.argv[1:] if argv is None else argv)
    s2, mode = cfg["stage2"], cfg["stage2"]["mode"]
    family = load_family(cfg["family"])
    if not hasattr(family, "build_stage2"):
        raise ConfigError(f"family {cfg['family']!r} has no stage 2")
    family.prepare_data(cfg)
    parts = family.build_stage2(cfg, stage1_state, mode)
    model = parts["model"].to(device)
    encoder = parts.get("encoder", getattr(model, "encoder", None))
    compiled = compile_towers(model, cfg["torchcompile_backend"], device=device) \
        if cfg["torchcompile"] else None   # in place: the same parameters and checkpoint keys
    datasets = parts["datasets"]

    run_dir = os.path.join(cfg["logs"], run_name(cfg))
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    os.makedirs(run_dir, exist_ok=True)
    dump(dict(cfg, stage2_init=init), os.path.join(run_dir, "config.yaml"))
    logger = RunLogger(run_dir)
    manager = CheckpointManager(ckpt_dir, cfg["keep_last"], max(1, cfg["keep_best"]),
                                s2["monitor_mode"])
    loader = make_train_loader(datasets["train"], parts["collate"], cfg)
    autocast = make_autocast(cfg["precision"], device, cfg.get("attention", "auto"))
    scaler = grad_scaler(cfg["precision"], device)
    state, commit = TrainState(), git_commit()

    frozen_phase = {"linear": s2["epochs"], "frozen_then_finetune": s2["frozen_epochs"]}.get(mode, 0)
    set_encoder_trainable(encoder, frozen_phase == 0)
    opt, sched = make_optimizer(model, encoder, s2, s2["lr"], frozen_phase or s2["epochs"],
                                len(loader))

    def fine_tune_phase(epoch):
        # Linear probe, then fine-tune (LP-FT): the trained head continues at
        # the encoder's small lr, so unfreezing does not restart a large warm-up
        # that would undo the probe.
        set_encoder_trainable(encoder, True)
        return make_optimizer(model, encoder, s2, s2["lr"] * s2["encoder_lr_mult"],
                              s2["epochs"] - epoch, len(loader))

    start = 0
    if resume is not None:
        if mode == "frozen_then_finetune" and resume["train_state"]["epoch"] >= frozen_phase:
            opt, sched = fine_tune_phase(frozen_phase)  # the optimizer the checkpoint holds
        restore_state({"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler,
                       "train_state": state}, resume)
        start = state.epoch + 1
    for epoch in range(start, s2["epochs"]):
        state.epoch = epoch
        if mode == "frozen_then_finetune" and epoch == frozen_phase:
            opt, sched = fine_tune_phase(epoch)
        seed_epoch(loader, cfg["seed"], epoch)
        model.train()
        if encoder is not None and not any(p.requires_grad for p in encoder.parameters()):
            encoder.eval()  # a frozen encoder also keeps its dropout/norm statistics fixed
        if hasattr(datasets["train"], "set_epoch"):
            datasets["train"].set_epoch(epoch)
        train_epoch(loader, model, parts["loss_fn"], opt, sched, scaler, autocast, state, cfg,
                    device, logger, ckpt_dir, f"stage2 {mode} epoch {epoch}")
        if compiled is not None and epoch == start:
            print(f"torch.compile ({cfg['torchcompile_backend']}): compiled "
                  f"{', '.join(compiled) or 'nothing'}")
        with torch.no_grad():
            model.eval()
            val = parts["evaluate"](model, datasets["val"], cfg, device)
        logger.scalars({f"stage2_val/{k}": v for k, v in val.items()}, state.step)
        logger.result({"epoch": epoch, "step": state.step, "split": "val", **val})
        if s2["monitor"] not in val:
            raise ConfigError(f"stage2.monitor {s2['monitor']!r} not in val metrics {sorted(val)}")
        objects = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler,
                   "train_state": state}
        manager.save(save_state(objects, config=cfg, git_commit=commit, stage=2, init=init),
                     state.step, val[s2["monitor"]])
        print(f"epoch {epoch}: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(val.items())))
    restore_state({"model": model}, load_checkpoint(os.path.join(ckpt_dir, "best.pt")))
    with torch.no_grad():
        model.eval()
        test = parts["evaluate"](model, datasets["test"], cfg, device, out_dir=run_dir)
    test = {k: float(v) for k, v in test.items()}
    logger.result({"split": "test", "mode": mode, **test})
    logger.close()
    atomic_json(os.path.join(run_dir, "metrics.json"), dict(test, mode=mode, init=init))
    print(f"stage 2 ({mode}) test: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(test.items())))
    return test


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, NonFiniteError, FileNotFoundError, UserDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
