"""Exact gradient accumulation for losses over the whole batch (contrastive).

With ``--accum-freq K`` the negatives of the whole effective batch are kept:

1. every micro-batch is encoded without grad and its features cached;
2. the loss over the whole batch is computed once, on leaf copies of the
   cached features, and back-propagated: this gives the gradient of every
   cached feature and, exactly once, of the criterion's own parameters
   (logit scale/bias, similarity heads);
3. each micro-batch is encoded again with grad and its cached feature
   gradient pushed through the encoder (``backward(gradient=...)``).

Summed over micro-batches this is exactly the gradient of the full-batch
loss, because the model is per-sample (see families/__init__.py); unlike
open_clip's variant the loss is computed once, not K times (GradCache's
ordering). Three defects of the usual implementation are avoided:
- the criterion's parameters get their gradient once, not K times;
- DDP would all-reduce on every micro-step: all but the last run in
  no_sync(), and the last one also touches the criterion's parameters so
  their (locally accumulated) gradient is reduced with the rest;
- dropout would make the re-encoded features differ from the cached ones:
  the RNG state before each cached forward is replayed for its re-encoding.
"""
import contextlib

import torch
import torch.nn as nn

from training.data import cat_batches


class ModelAndLoss(nn.Module):
    """One module for DDP: the model and the criterion together, so that every
    trainable parameter's gradient is reduced by DDP."""

    def __init__(self, model, criterion):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, batch, epoch=0, features_only=False, touch_criterion=False):
        features = self.model(batch)
        if not features_only:
            return self.criterion(features, batch, epoch)
        if touch_criterion:
            # A zero that depends on every trainable criterion parameter: DDP
            # then reduces their gradient, accumulated in step 2, in this pass.
            params = [p for p in self.criterion.parameters() if p.requires_grad]
            zero = sum((p.sum() * 0.0 for p in params), torch.zeros(()))
            features = dict(features, _criterion_zero=zero)
        return features


def _rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _leaf(v):
    if torch.is_tensor(v) and v.is_floating_point():
        return v.detach().requires_grad_(True)
    return v


def forward_backward(ddp_module, module, micro_batches, epoch, autocast, scaler, device,
                     reseed=None):
    """Forward and backward over the micro-batches of one optimizer step.

    ``ddp_module`` is the (possibly DDP-wrapped) ModelAndLoss, ``module`` the
    unwrapped one. ``reseed(j)``, if given, reseeds the random streams before
    micro-batch j's first forward (the loop derives it from the data
    position, so dropout does not depend on how the run was resumed).
    Returns (loss, logs) of the full effective batch.
    """
    if len(micro_batches) == 1:
        if reseed is not None:
            reseed(0)
        with autocast():
            loss, logs = ddp_module(micro_batches[0], epoch=epoch)
        scaler.scale(loss).backward()
        return loss.detach(), logs

    # 1. encode without grad, remembering the RNG state before each micro-batch
    cache, states = [], []
    with torch.no_grad():
        for j, mb in enumerate(micro_batches):
            if reseed is not None:
                reseed(j)
            states.append(_rng_state(device))
            with autocast():
                cache.append({k: _leaf(v) for k, v in module.model(mb).items()})
    end_state = _rng_state(device)

    # 2. the loss over the whole batch, once
    with autocast():
        loss, logs = module.criterion(cat_batches(cache), cat_batches(micro_batches), epoch)
    scaler.scale(loss).backward()

    # 3. re-encode with grad and push the cached feature gradients through
    distributed = hasattr(ddp_module, "no_sync")
    for j, mb in enumerate(micro_batches):
        last = j == len(micro_batches) - 1
        _set_rng_state(states[j], device)
        sync = contextlib.nullcontext() if (last or not distributed) else ddp_module.no_sync()
        with sync:
            with autocast():
                out = ddp_module(mb, epoch=epoch, features_only=True,
                                 touch_criterion=last and distributed)
            surrogate = out.pop("_criterion_zero", torch.zeros((), device=device))
            for k, v in out.items():
                g = cache[j][k].grad if torch.is_tensor(cache[j][k]) else None
                if g is not None and v.requires_grad:
                    surrogate = surrogate + (v * g.to(v.dtype)).sum()
            if surrogate.requires_grad:
                surrogate.backward()
    _set_rng_state(end_state, device)
    return loss.detach(), logs
