"""Data helpers shared by every family: deterministic per-item randomness,
a resumable sampler that orders the data by global batch, and batch
concatenation for accumulation."""

import numpy as np
import torch
from torch.utils.data import Sampler


def item_rng(seed, epoch, index):
    """Random generator for one item of one epoch: the same item draws the same
    crop/augmentation whichever worker loads it and however the run was
    resumed."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


class ResumableDistributedSampler(Sampler):
    """The order of the data defined by *global* batch, resumable mid-epoch.

    Epoch e is a permutation of the dataset seeded by (seed, e); optimizer
    step s of the epoch takes the global batch ``perm[s*G:(s+1)*G]`` with
    ``G = batch_size * num_replicas``, whatever the number of ranks; rank r
    takes the contiguous slice ``[r*batch_size:(r+1)*batch_size]`` of it, and
    its micro-batches (a DataLoader with ``batch_size / accum_freq`` items)
    are consecutive chunks of that slice. So 2 ranks x 16 and 1 rank x 32
    (with or without ``--accum-freq 2``) feed step s the same 32 items in the
    same order, and a run may resume on another number of ranks with the same
    global batch. The last partial global batch of an epoch is dropped.

    The position (epoch, steps done in the epoch) lives in the run's
    TrainState; ``state_dict`` records what defines the order, and
    ``load_state_dict`` refuses a checkpoint whose order was another.
    """

    def __init__(self, dataset, num_replicas=1, rank=0, shuffle=True, seed=0, batch_size=1):
        self.n = len(dataset)
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.batch_size = shuffle, seed, batch_size
        self.global_batch = batch_size * num_replicas
        self.steps_per_epoch = self.n // self.global_batch
        self.num_samples = self.steps_per_epoch * batch_size  # this rank's items per epoch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch, start_step=0):
        """Iterate epoch ``epoch`` from its optimizer step ``start_step``."""
        self.epoch, self.start_step = epoch, start_step

    def permutation(self):
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def indices(self):
        perm, b = self.permutation(), self.batch_size
        out = []
        for s in range(self.start_step, self.steps_per_epoch):
            first = s * self.global_batch + self.rank * b
            out += perm[first:first + b]
        return out

    def __iter__(self):
        return iter(self.indices())

    def __len__(self):
        return (self.steps_per_epoch - self.start_step) * self.batch_size

    def state_dict(self):
        return {"num_items": self.n, "global_batch": self.global_batch, "seed": self.seed,
                "shuffle": self.shuffle}

    def load_state_dict(self, state):
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if "global_batch" in diff:
            was, now = diff["global_batch"]
            raise ValueError(
                f"the checkpoint's global batch is {was} items a step, this run's is {now} "
                f"(batch_size {self.batch_size} x {self.num_replicas} ranks): choose --batch-size "
                f"so that batch_size x ranks = {was} (e.g. with --accum-freq on fewer ranks)")
        if diff:
            raise ValueError("the checkpoint's data order differs from this run's in "
                             + ", ".join(f"{k} ({a} -> {b})" for k, (a, b) in diff.items()))


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
