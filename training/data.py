"""Data helpers shared by every family: deterministic per-item randomness,
a resumable distributed sampler and batch concatenation for accumulation."""
import math

import numpy as np
import torch
from torch.utils.data import Sampler


def item_rng(seed, epoch, index):
    """Random generator for one item of one epoch: the same item draws the same
    crop/augmentation whichever worker loads it and however the run was
    resumed."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


class ResumableDistributedSampler(Sampler):
    """DistributedSampler that can start part-way through an epoch.

    Shuffles with a generator seeded by (seed, epoch), pads to a multiple of
    world_size and hands rank r every world_size-th index, like
    torch's DistributedSampler; ``start`` skips the first ``start`` indices of
    this rank's share (the data position saved in a checkpoint).
    """

    def __init__(self, dataset, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True):
        self.n = len(dataset)
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        if drop_last:
            self.num_samples = self.n // num_replicas
        else:
            self.num_samples = math.ceil(self.n / num_replicas)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def indices(self):
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 100003 + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        total = self.num_samples * self.num_replicas
        if total > len(idx):
            idx += idx[: total - len(idx)]
        idx = idx[:total]
        return idx[self.rank:total:self.num_replicas]

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self):
        return self.num_samples - self.start


def _pad_to(t, shape):
    if tuple(t.shape) == tuple(shape):
        return t
    pad = []
    for have, want in zip(reversed(t.shape), reversed(shape)):
        pad += [0, want - have]
    if t.dtype == torch.bool:
        return torch.nn.functional.pad(t.to(torch.uint8), pad).bool()
    return torch.nn.functional.pad(t, pad)


def cat_batches(parts):
    """Concatenate per-sample dicts (features or batches) along dim 0.

    Tensors whose trailing dims differ (token sequences padded per
    micro-batch) are zero/False-padded to the largest; lists are joined;
    anything else must be equal across parts and is kept once.
    """
    out = {}
    for key in parts[0]:
        vals = [p[key] for p in parts]
        v0 = vals[0]
        if torch.is_tensor(v0) and v0.dim() > 0:
            shape = [max(v.shape[d] for v in vals) for d in range(v0.dim())]
            out[key] = torch.cat([_pad_to(v, [v.shape[0]] + shape[1:]) for v in vals], 0)
        elif isinstance(v0, (list, tuple)):
            out[key] = [x for v in vals for x in v]
        elif isinstance(v0, dict):
            out[key] = cat_batches(vals)
        else:
            out[key] = v0
    return out


def to_device(batch, device, non_blocking=True):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, list) and batch and torch.is_tensor(batch[0]):
        return [to_device(v, device, non_blocking) for v in batch]
    return batch
