"""GroundingLoss: coarse image <-> caption InfoNCE (+ object-masked images as
extra negatives), fine entity <-> object InfoNCE over in-sample and
cross-sample objects, and a hard-negative term on the top-k most similar
non-matching pairs. Separate learnable temperatures for the three (FG-CLIP).

Distributed: the features of every rank are gathered through
losses/distributed.py with ClipLoss's flags and the same exactness argument
(see losses/clip_loss.py): the default gathers other ranks' features as
constants, computes the global loss on every rank and multiplies the
features' gradient by world_size; ``gather_with_grad`` gathers with
gradient; ``local_loss`` (needs ``gather_with_grad``) computes only the rows
of this rank's shard (its captions, images and entities) against every
rank's columns. Every term is normalised so that the mean over ranks of the
per-rank losses is the single-process loss on the global batch.
"""
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from losses.distributed import all_gather_no_grad, all_gather_with_grad, scale_grad


def _pad_to_ranks(x):
    """x [n, ...] padded in dims 1.. to the largest shape on any rank."""
    if x.dim() < 2:
        return x
    shape = torch.tensor(x.shape[1:], device=x.device)
    dist.all_reduce(shape, op=dist.ReduceOp.MAX)
    pad = []
    for have, want in zip(reversed(x.shape[1:]), reversed(shape.tolist())):
        pad += [0, want - have]
    if not any(pad):
        return x
    if x.dtype == torch.bool:
        return F.pad(x.to(torch.uint8), pad).bool()
    return F.pad(x, pad)


def soft_cross_entropy(logits, positives):
    """InfoNCE with several positives: -log(sum_pos softmax). logits [N, M], positives [N, M] bool."""
    logz = torch.logsumexp(logits, 1)
    logp = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), 1)
    return logz - logp                                                     # [N]


@torch.no_grad()
def mine_hard_negatives(sim, same, k):
    """Top-k most similar non-matching columns of each row.

    sim [N, M] similarities; same [N, M] bool, True where row and column come
    from the same image (every such pair is excluded, not just the diagonal:
    X-VLM). Returns idx [N, k'] and valid [N, k'] (k' = min(k, M)); rows with
    fewer than k' eligible columns have valid False in the tail.
    """
    k = min(k, sim.shape[1])
    masked = sim.float().masked_fill(same, float("-inf"))
    val, idx = masked.topk(k, dim=1)
    return idx, torch.isfinite(val)


def loss_weights(weights, schedule, epoch, epochs):
    """Coarse/fine weights by epoch. 'linear' is seed 004 sec. 4: coarse first,
    fine later: coarse = max(0.3, 1 - e/E), fine = min(1, 0.5 + e/E), each times
    its configured weight."""
    wc, wf = weights["coarse"], weights["fine"]
    if schedule == "linear":
        p = epoch / max(1, epochs)
        return wc * max(0.3, 1 - p), wf * min(1.0, 0.5 + p)
    if schedule != "constant":
        raise ValueError(f"loss.weight_schedule must be constant or linear, got {schedule!r}")
    return wc, wf


class GroundingLoss(nn.Module):
    def __init__(self, loss_weights=None, weight_schedule="linear", epochs=1, fine_cross_sample=True,
                 hard_negatives=True, hard_negative_k=3, masked_negatives=True,
                 init_temperature=0.07, local_loss=False, gather_with_grad=False, rank=0, world_size=1):
        super().__init__()
        if local_loss and not gather_with_grad:
            raise ValueError("GroundingLoss(local_loss=True, gather_with_grad=False) gives wrong gradients "
                             "(the rows other ranks compute against this rank's features are lost); use "
                             "--local-loss with --gather-with-grad, or leave --local-loss off")
        self.weights = {"coarse": 1.0, "fine": 1.0, "hard_negative": 0.5, **(loss_weights or {})}
        self.schedule, self.epochs = weight_schedule, epochs
        self.fine_cross_sample, self.hard_negatives, self.k = fine_cross_sample, hard_negatives, hard_negative_k
        self.masked_negatives = masked_negatives
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size
        init = math.log(1 / init_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(init))        # coarse
        self.fine_logit_scale = nn.Parameter(torch.tensor(init))   # entity <-> object
        self.hard_logit_scale = nn.Parameter(torch.tensor(init))   # hard-negative term

    @staticmethod
    def _scale(p):
        return p.exp().clamp(max=100.0)

    def _gather(self, x, pad=False):
        """[n, ...] -> [world_size * n, ...] in rank order; masks and ids carry no gradient.
        pad: dims 1.. (boxes, phrases: padded per batch) differ across ranks; pad them to
        the largest first (zeros / False: invalid slots), as all_gather needs one shape."""
        if self.world_size == 1:
            return x
        if pad:
            x = _pad_to_ranks(x)
        if not x.is_floating_point():
            return all_gather_no_grad(x, self.rank, self.world_size)
        if self.gather_with_grad:
            return all_gather_with_grad(x, self.rank, self.world_size)
        # the global loss on every rank: undo DDP's 1/world_size on this rank's features
        return all_gather_no_grad(scale_grad(x, float(self.world_size)), self.rank, self.world_size)

    def coarse(self, img, txt, ids, rows, masked=None):
        """img, txt [N, D] normalised; ids [N] image ids; rows [n] global indices
        of the rows this rank computes; masked [N, D] or None. Mean over rows."""
        s = self._scale(self.logit_scale)
        same = ids[rows, None] == ids[None, :]                              # [n, N]
        t2i = s * txt[rows] @ img.t()
        pos = same
        if masked is not None:
            # masked image j is a negative for caption i if it is another image,
            # or i's own image with an object i names hidden (j == i)
            own = rows[:, None] == torch.arange(len(ids), device=ids.device)[None, :]
            t2i_m = (s * txt[rows] @ masked.t()).masked_fill(same & ~own, float("-inf"))
            t2i = torch.cat([t2i, t2i_m], 1)                                # [n, 2N]
            pos = torch.cat([same, torch.zeros_like(same)], 1)
        i2t = s * img[rows] @ txt.t()                                       # [n, N]
        return (soft_cross_entropy(t2i, pos).mean() + soft_cross_entropy(i2t, same).mean()) / 2

    def fine(self, ent, ent_valid, obj, obj_valid, target, rows):
        """ent [N, E, D], obj [N, O, D] normalised; target [N, E, O] bool; rows
        [n] the samples whose entities this rank computes. The sum over those
        entities is divided by the global number of entities with a positive
        (times the number of shards when rows is one), so the per-rank losses
        average to the mean over the global batch."""
        N, E, D = ent.shape
        O = obj.shape[1]
        ov = obj_valid.reshape(-1)
        bo = torch.arange(N, device=ent.device).repeat_interleave(O)[ov]
        o = obj.reshape(-1, D)[ov]                                          # [No, D]
        has_pos = (target & obj_valid[:, None, :]).any(-1) & ent_valid       # [N, E]
        n_pos = has_pos.sum()
        if len(o) == 0 or n_pos == 0:
            return (ent.sum() + obj.sum()) * 0.0
        ev = ent_valid[rows].reshape(-1)
        be = rows.repeat_interleave(E)[ev]
        e = ent[rows].reshape(-1, D)[ev]                                    # [Ne, D]
        logits = self._scale(self.fine_logit_scale) * e @ o.t()             # [Ne, No]
        same = be[:, None] == bo[None, :]
        if not self.fine_cross_sample:
            logits = logits.masked_fill(~same, float("-inf"))
        tgt = target[rows].reshape(-1, O)[ev]                               # [Ne, O]
        slot = torch.arange(O, device=ent.device).repeat(N)[ov]             # [No]
        pos = same & tgt[:, slot]
        keep = pos.any(1)
        shards = N // len(rows)
        return soft_cross_entropy(logits[keep], pos[keep]).sum() * shards / n_pos

    def hard(self, img, txt, ids, rows):
        """Each caption against its image and its k hardest other images, and
        each image against its caption(s) and its k hardest other captions."""
        s = self._scale(self.hard_logit_scale)
        same = ids[rows, None] == ids[None, :]                              # [n, N]
        terms = []
        for a, b in ((txt, img), (img, txt)):
            sim = a[rows] @ b.t()                                           # [n, N]
            idx, valid = mine_hard_negatives(sim, same, self.k)             # [n, k]
            pos = (a[rows] * b[rows]).sum(-1, keepdim=True)                 # [n, 1] (own pair)
            neg = torch.einsum("nd,nkd->nk", a[rows], b[idx])               # [n, k]
            # padding is masked after scaling: -inf * s would give s the gradient 0 * -inf = NaN
            logits = (s * torch.cat([pos, neg], 1)).masked_fill(~F.pad(valid, (1, 0), value=True),
                                                                float("-inf"))
            terms.append(F.cross_entropy(logits, torch.zeros_like(rows)))
        return sum(terms) / 2

    def forward(self, features, batch, epoch=0):
        n = lambda x: F.normalize(x.float(), dim=-1)
        g = self._gather
        img, txt = g(n(features["image_features"])), g(n(features["text_features"]))   # [N, D]
        ids = g(batch["image_index"].to(img.device))
        local = features["image_features"].shape[0]
        rows = torch.arange(len(ids), device=img.device)                     # [N]: the global loss
        if self.local_loss and self.world_size > 1:
            rows = rows[self.rank * local:(self.rank + 1) * local]           # [n]: this shard's rows
        masked = None
        if self.masked_negatives and "masked_image_features" in features:
            masked = g(n(features["masked_image_features"]))
        wc, wf = loss_weights(self.weights, self.schedule, epoch, self.epochs)
        l_coarse = self.coarse(img, txt, ids, rows, masked)
        gp = lambda x: self._gather(x, pad=True)
        l_fine = self.fine(gp(n(features["entity_features"])), gp(features["entity_valid"]),
                           gp(n(features["object_features"])), gp(features["object_valid"]),
                           gp(batch["entity_target"].to(img.device)), rows)
        loss = wc * l_coarse + wf * l_fine
        logs = {"loss_coarse": l_coarse.detach(), "loss_fine": l_fine.detach(), "w_coarse": wc, "w_fine": wf,
                "scale_coarse": self._scale(self.logit_scale).detach(),
                "scale_fine": self._scale(self.fine_logit_scale).detach()}
        if self.hard_negatives and self.weights["hard_negative"] > 0:
            l_hard = self.hard(img, txt, ids, rows)
            loss = loss + self.weights["hard_negative"] * l_hard
            logs["loss_hard"] = l_hard.detach()
        logs["loss"] = loss.detach()
        if "entity_valid" in batch:  # phrases the text encoder's max_length cut away (this rank)
            logs["entities_truncated"] = (batch["entity_valid"].to(img.device)
                                          & ~features["entity_valid"]).sum().float()
        return loss, logs
