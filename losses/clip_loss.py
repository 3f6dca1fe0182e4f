"""Symmetric InfoNCE (CLIP) loss with exact distributed gradients.

loss = (CE(s * A @ B^T, targets) + CE(s * B @ A^T, targets)) / 2 over the
global batch (all ranks' shards concatenated in rank order).

Distributed modes (open_clip flag names), all exact after DDP's mean
all-reduce of gradients, i.e. mean over ranks of the gradients == gradient
of the single-process loss on the global batch:

- default (``gather_with_grad=False, local_loss=False``): gather the other
  ranks' features as constants and compute the full global loss on every
  rank. The gradient reaching this rank's features is then the true
  dL/d(own shard), but DDP divides it by world_size (the other ranks
  contribute nothing to it), so we multiply it by world_size in backward.
  The logit scale gets the full dL/ds on every rank and is left as is.
  (open_clip omits that factor: its features get 1/world_size of their
  gradient while the scale gets all of it.)
- ``gather_with_grad=True``: the gather's backward sums every rank's
  gradient, each rank's loss is the global loss, so the sum is world_size *
  dL/d(shard) and DDP's mean makes it exact. Memory ~ global^2 per rank.
- ``local_loss=True, gather_with_grad=True``: each rank only computes the rows
  of its own shard against the global columns (labels arange(n) + n*rank);
  the mean of the per-rank losses is the global loss. Memory ~ n * global.
- ``local_loss=True, gather_with_grad=False`` is refused: the columns from
  the other ranks carry no gradient and no rank computes the rows that would
  supply it, so part of every shard's gradient is lost.

Multi-positive targets: pass ``ids`` (LongTensor [n], e.g. a caption id);
items of the global batch that share an id are all positives, with targets
uniform over them in both directions (duplicate captions in one batch are
not false negatives). With all ids distinct this is the plain loss.
Shards must have equal size on every rank (all_gather needs it).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from losses.distributed import all_gather_no_grad, all_gather_with_grad
from models.grad import scale_grad


class ClipLoss(nn.Module):
    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=True,
                 rank=0, world_size=1):
        super().__init__()
        if local_loss and not gather_with_grad:
            raise ValueError(
                "ClipLoss(local_loss=True, gather_with_grad=False) gives wrong gradients: "
                "each rank computes only its own rows, the gathered columns from other ranks "
                "are constants, so the gradient that other ranks' rows would send to this "
                "rank's features is lost. Use local_loss=True with gather_with_grad=True "
                "(memory ~ local x global), or local_loss=False (global x global).")
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.cache_labels, self.rank, self.world_size = cache_labels, rank, world_size
        self._labels = {}  # (device, n_rows) -> LongTensor [n_rows]

    def _gather(self, x):
        if self.gather_with_grad:
            return all_gather_with_grad(x, self.rank, self.world_size)
        return all_gather_no_grad(x, self.rank, self.world_size)

    def get_ground_truth(self, device, n_rows):
        """Column index of each row's positive: arange(n) (+ n*rank when each
        rank computes only its own rows against the gathered columns)."""
        key = (device, n_rows)
        if key in self._labels:
            return self._labels[key]
        labels = torch.arange(n_rows, device=device, dtype=torch.long)
        if self.world_size > 1 and self.local_loss:
            labels = labels + n_rows * self.rank
        if self.cache_labels:
            self._labels[key] = labels
        return labels

    def forward(self, features_a, features_b, logit_scale, ids=None):
        # features_*: [n, D], L2-normalised; logit_scale: the multiplier.
        n = features_a.shape[0]
        if features_b.shape[0] != n:
            raise ValueError(f"ClipLoss: features_a has {n} rows, features_b "
                             f"{features_b.shape[0]}; expected one row per item in both")
        if ids is not None and ids.shape != (n,):
            raise ValueError(f"ClipLoss: ids must be a LongTensor of shape [{n}], "
                             f"got {tuple(ids.shape)}")
        if ids is not None:
            ids = ids.to(features_a.device)  # NCCL gathers device tensors only

        if self.world_size > 1:
            if not self.gather_with_grad:
                # See the module docstring: undo DDP's 1/world_size on features.
                features_a = scale_grad(features_a, float(self.world_size))
                features_b = scale_grad(features_b, float(self.world_size))
            all_a, all_b = self._gather(features_a), self._gather(features_b)  # [N, D]
            all_ids = None if ids is None else all_gather_no_grad(ids, self.rank, self.world_size)
            if self.local_loss:
                rows_a, rows_b, row_ids = features_a, features_b, ids  # [n, D]
            else:
                rows_a, rows_b, row_ids = all_a, all_b, all_ids      # [N, D]
        else:
            all_a, all_b, all_ids = features_a, features_b, ids
            rows_a, rows_b, row_ids = features_a, features_b, ids

        logits_a = logit_scale * rows_a @ all_b.T  # [rows, N]
        logits_b = logit_scale * rows_b @ all_a.T  # [rows, N]

        if ids is None:
            labels = self.get_ground_truth(logits_a.device, logits_a.shape[0])
            return (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2

        # Soft targets: uniform over the global items sharing this row's id.
        # (at least fp32: bf16 targets would not sum to one)
        dtype = torch.promote_types(logits_a.dtype, torch.float32)
        same = (row_ids[:, None] == all_ids[None, :]).to(dtype)  # [rows, N]
        targets = same / same.sum(dim=1, keepdim=True)
        return (F.cross_entropy(logits_a.to(dtype), targets)
                + F.cross_entropy(logits_b.to(dtype), targets)) / 2
