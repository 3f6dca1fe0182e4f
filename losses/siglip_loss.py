"""Sigmoid (SigLIP) loss with exact distributed gradients.

loss_r = -sum_{i in shard r, j in global batch} log sigmoid(z_ij * (s * a_i . b_j + bias)) / n_local
with z = +1 for the matching pair and -1 otherwise. The mean of loss_r over
ranks equals the single-process loss on the global batch (normalised by
its size), so after DDP's mean all-reduce the gradients are exact.

Distributed: this rank's ``a`` rows meet every rank's ``b`` shard; the b
shards travel round the ring to both neighbours at once (world_size - 1
blocks in ceil((world_size - 1) / 2) steps), and the reverse exchange in
backward returns each block's gradient to the rank that owns it. Blocks
from other ranks hold no positives (all z = -1).

The scale s (a multiplier, the exp of a learnable log initialised to
log 10) and the bias (initialised to -10) are passed in: they are learnable
parameters of the criterion that owns them and must be in the optimizer.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from losses.distributed import neighbour_exchange, neighbour_exchange_bidir


class SigLipLoss(nn.Module):
    def __init__(self, rank=0, world_size=1):
        super().__init__()
        self.rank, self.world_size = rank, world_size

    @staticmethod
    def _block(a, b, logit_scale, logit_bias, positives):
        # a: [n, D], b: [m, D] -> summed -log sigmoid over the n x m block
        logits = logit_scale * a @ b.T + logit_bias  # [n, m]
        # Sum n*m terms in at least fp32 (autocast leaves logsigmoid in bf16).
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        z = -torch.ones_like(logits)
        if positives:
            z.diagonal().fill_(1.0)
        return -F.logsigmoid(z * logits).sum()

    def forward(self, features_a, features_b, logit_scale, logit_bias):
        # features_*: [n, D], L2-normalised.
        n = features_a.shape[0]
        if features_b.shape[0] != n:
            raise ValueError(f"SigLipLoss: features_a has {n} rows, features_b "
                             f"{features_b.shape[0]}; expected one row per item in both")
        loss = self._block(features_a, features_b, logit_scale, logit_bias, positives=True)
        if self.world_size > 1:
            right = (self.rank + 1) % self.world_size
            left = (self.rank - 1 + self.world_size) % self.world_size
            to_left = to_right = features_b
            num_bidir, remainder = divmod(self.world_size - 1, 2)
            for _ in range(num_bidir):
                from_left, from_right = neighbour_exchange_bidir(left, right, to_left, to_right)
                for b in (from_left, from_right):
                    loss = loss + self._block(features_a, b, logit_scale, logit_bias, False)
                # Pass each shard one more step in the direction it travels.
                to_left, to_right = from_right, from_left
            if remainder:
                from_left = neighbour_exchange(left, right, to_right)
                loss = loss + self._block(features_a, from_left, logit_scale, logit_bias, False)
        return loss / n
