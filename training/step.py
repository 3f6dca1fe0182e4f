"""The optimizer half of a training step, shared by stage 1 and stage 2:
unscale, clip, agree across ranks on whether the step is finite, step.

Every rank must take the same branch, or their step counters (and so their
collectives) diverge. A non-finite loss is rank-local, so it is all-reduced
with the gradient-norm flag and the stop request in one collective before
anything is decided. The gradients themselves are already all-reduced by DDP.
"""
import math
from dataclasses import dataclass

import torch

from training.distributed import all_reduce_max


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row (``max_nonfinite``)."""


@dataclass
class StepOutcome:
    stepped: bool      # the update was applied (or, under fp16, left to the scaler)
    grad_norm: torch.Tensor
    stop: bool         # some rank was asked to stop (SIGTERM/SIGINT): every rank stops


def optimizer_step(optimizer, scaler, scheduler, params, loss, state, info, grad_clip_norm=None,
                   stop_requested=False):
    """Apply the step whose gradients ``loss.backward`` left in ``params``.

    ``state`` is the run's TrainState: ``step`` advances on a taken step,
    ``nonfinite_in_row/total`` count skipped ones. Under fp16 (``scaler``
    enabled) a finite loss with overflowing gradients is left to the scaler,
    which skips the update and lowers its scale (the step still counts, as in
    open_clip); a non-finite loss on any rank skips the step on every rank.
    """
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip_norm or math.inf)
    loss_bad, grad_bad, stop = all_reduce_max(
        [float(not bool(torch.isfinite(loss))), float(not bool(torch.isfinite(grad_norm))),
         float(bool(stop_requested))], info)
    if loss_bad or (grad_bad and not scaler.is_enabled()):
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.update()  # unscale_ was called: the scaler must close this iteration
        state.nonfinite_in_row += 1
        state.nonfinite_total += 1
        return StepOutcome(False, grad_norm, stop > 0)
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:  # None: the caller steps a schedule that has an end
        scheduler.step()
    state.step += 1
    state.nonfinite_in_row = 0
    return StepOutcome(True, grad_norm, stop > 0)


def check_nonfinite(state, max_nonfinite, ckpt_dir):
    if state.nonfinite_in_row >= max_nonfinite:
        raise NonFiniteError(
            f"{state.nonfinite_in_row} non-finite steps in a row at step {state.step} "
            f"(max_nonfinite={max_nonfinite}); stopping. The last good checkpoint in {ckpt_dir} "
            f"is intact: lower --lr, try --grad-clip-norm or --precision fp32, then --resume latest")
