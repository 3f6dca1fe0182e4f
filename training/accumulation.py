"""Exact gradient accumulation for losses over the whole batch (contrastive).

With ``--accum-freq K`` every micro-batch is first encoded without grad and its
features cached; then each micro-batch j is encoded again with grad, its
features substituted into the cache, the loss taken over the whole effective
batch and back-propagated. Summed over j this is exactly the gradient of the
full-batch loss, because the model is per-sample (see families/__init__.py).

Three defects of the usual implementation are avoided here:
- the criterion's own parameters (logit scale/bias, similarity heads) would
  get their gradient K times: they are detached in all but the last micro-step;
- DDP would all-reduce on every micro-step: all but the last run in no_sync();
- dropout would make the recomputed features differ from the cached ones: the
  RNG state before each cached forward is replayed for its recomputation.
"""
import contextlib

import torch
import torch.nn as nn
from torch.func import functional_call

from training.data import cat_batches


class ModelAndLoss(nn.Module):
    """One module for DDP: the model's forward and the criterion together, so
    that every trainable parameter's gradient is reduced by DDP."""

    def __init__(self, model, criterion):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, batch, epoch=0, cache=None, index=None, full_batch=None,
                detach_criterion=False):
        features = self.model(batch)
        if cache is not None:
            parts = list(cache)
            parts[index] = features
            features = cat_batches(parts)
            batch = full_batch
        if detach_criterion:
            params = {n: p.detach() for n, p in self.criterion.named_parameters()}
            return functional_call(self.criterion, params, (features, batch, epoch))
        return self.criterion(features, batch, epoch)


def _rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def forward_backward(ddp_module, module, micro_batches, epoch, autocast, scaler, device):
    """Run forward and backward over the micro-batches of one optimizer step.

    ``ddp_module`` is the (possibly DDP-wrapped) ModelAndLoss, ``module`` the
    unwrapped one. Returns (loss, logs) of the full effective batch.
    """
    if len(micro_batches) == 1:
        with autocast():
            loss, logs = ddp_module(micro_batches[0], epoch=epoch)
        scaler.scale(loss).backward()
        return loss.detach(), logs

    cache, states = [], []
    with torch.no_grad():
        for mb in micro_batches:
            states.append(_rng_state(device))
            with autocast():
                cache.append({k: v.detach() if torch.is_tensor(v) else v
                              for k, v in module.model(mb).items()})
    end_state = _rng_state(device)
    full_batch = cat_batches(micro_batches)
    distributed = hasattr(ddp_module, "no_sync")
    for j, mb in enumerate(micro_batches):
        last = j == len(micro_batches) - 1
        _set_rng_state(states[j], device)
        sync = contextlib.nullcontext() if (last or not distributed) else ddp_module.no_sync()
        with sync:
            with autocast():
                loss, logs = ddp_module(mb, epoch=epoch, cache=cache, index=j,
                                        full_batch=full_batch, detach_criterion=not last)
            scaler.scale(loss).backward()
    _set_rng_state(end_state, device)
    return loss.detach(), logs
