"""GroundingLoss: coarse image <-> caption InfoNCE (+ object-masked images as
extra negatives), fine entity <-> object InfoNCE over in-sample and
cross-sample objects, and a hard-negative term on the top-k most similar
non-matching pairs. Separate learnable temperatures for the three (FG-CLIP).
"""
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def gather(t, world_size):
    """All-gather with gradient (open_clip's gather_with_grad); identity on one process."""
    if world_size == 1:
        return t
    if t.is_floating_point():
        import torch.distributed.nn.functional as dnf
        return torch.cat(dnf.all_gather(t), 0)
    parts = [torch.empty_like(t) for _ in range(world_size)]  # masks, ids: no gradient
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


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
                 init_temperature=0.07, rank=0, world_size=1):
        super().__init__()
        self.weights = {"coarse": 1.0, "fine": 1.0, "hard_negative": 0.5, **(loss_weights or {})}
        self.schedule, self.epochs = weight_schedule, epochs
        self.fine_cross_sample, self.hard_negatives, self.k = fine_cross_sample, hard_negatives, hard_negative_k
        self.masked_negatives = masked_negatives
        self.rank, self.world_size = rank, world_size
        init = math.log(1 / init_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(init))        # coarse
        self.fine_logit_scale = nn.Parameter(torch.tensor(init))   # entity <-> object
        self.hard_logit_scale = nn.Parameter(torch.tensor(init))   # hard-negative term

    @staticmethod
    def _scale(p):
        return p.exp().clamp(max=100.0)

    def coarse(self, img, txt, ids, masked=None):
        """img, txt [N, D] normalised; ids [N] image ids; masked [N, D] or None."""
        s = self._scale(self.logit_scale)
        same = ids[:, None] == ids[None, :]                                 # [N, N]
        t2i = s * txt @ img.t()
        pos = same
        if masked is not None:
            # masked image j is a negative for caption i if it is another image,
            # or i's own image with an object i names hidden (j == i)
            eye = torch.eye(len(ids), dtype=torch.bool, device=ids.device)
            t2i_m = (s * txt @ masked.t()).masked_fill(same & ~eye, float("-inf"))
            t2i = torch.cat([t2i, t2i_m], 1)                                # [N, 2N]
            pos = torch.cat([same, torch.zeros_like(same)], 1)
        i2t = s * img @ txt.t()
        return (soft_cross_entropy(t2i, pos).mean() + soft_cross_entropy(i2t, same).mean()) / 2

    def fine(self, ent, ent_valid, obj, obj_valid, target):
        """ent [N, E, D], obj [N, O, D] normalised; target [N, E, O] bool."""
        N, E, D = ent.shape
        O = obj.shape[1]
        be = torch.arange(N, device=ent.device).repeat_interleave(E)[ent_valid.reshape(-1)]
        e = ent.reshape(-1, D)[ent_valid.reshape(-1)]                       # [Ne, D]
        ov = obj_valid.reshape(-1)
        bo = torch.arange(N, device=ent.device).repeat_interleave(O)[ov]
        o = obj.reshape(-1, D)[ov]                                          # [No, D]
        if len(e) == 0 or len(o) == 0:
            return (ent.sum() + obj.sum()) * 0.0
        logits = self._scale(self.fine_logit_scale) * e @ o.t()             # [Ne, No]
        same = be[:, None] == bo[None, :]
        if not self.fine_cross_sample:
            logits = logits.masked_fill(~same, float("-inf"))
        tgt = target.reshape(N * E, O)[ent_valid.reshape(-1)]               # [Ne, O]
        slot = torch.arange(O, device=ent.device).repeat(N)[ov]             # [No]
        pos = same & tgt[:, slot]
        keep = pos.any(1)
        return soft_cross_entropy(logits[keep], pos[keep]).mean() if keep.any() else logits.sum() * 0.0

    def hard(self, img, txt, ids):
        """Each caption against its image and its k hardest other images, and
        each image against its caption(s) and its k hardest other captions."""
        s = self._scale(self.hard_logit_scale)
        same = ids[:, None] == ids[None, :]
        sim = txt @ img.t()                                                 # [N, N]
        terms = []
        for a, b, sm in ((txt, img, sim), (img, txt, sim.t())):
            idx, valid = mine_hard_negatives(sm, same, self.k)             # [N, k]
            pos = (a * b).sum(-1, keepdim=True)                             # [N, 1] (own pair)
            neg = torch.einsum("nd,nkd->nk", a, b[idx])                     # [N, k]
            # padding is masked after scaling: -inf * s would give s the gradient 0 * -inf = NaN
            logits = (s * torch.cat([pos, neg], 1)).masked_fill(~F.pad(valid, (1, 0), value=True),
                                                                float("-inf"))
            terms.append(F.cross_entropy(logits, torch.zeros_like(ids)))
        return sum(terms) / 2

    def forward(self, features, batch, epoch=0):
        n = lambda x: F.normalize(x.float(), dim=-1)
        ws = self.world_size
        img, txt = gather(n(features["image_features"]), ws), gather(n(features["text_features"]), ws)
        ids = gather(batch["image_index"].to(img.device), ws)
        masked = None
        if self.masked_negatives and "masked_image_features" in features:
            masked = gather(n(features["masked_image_features"]), ws)
        wc, wf = loss_weights(self.weights, self.schedule, epoch, self.epochs)
        l_coarse = self.coarse(img, txt, ids, masked)
        l_fine = self.fine(gather(n(features["entity_features"]), ws), gather(features["entity_valid"], ws),
                           gather(n(features["object_features"]), ws), gather(features["object_valid"], ws),
                           gather(batch["entity_target"].to(img.device), ws))
        loss = wc * l_coarse + wf * l_fine
        logs = {"loss_coarse": l_coarse.detach(), "loss_fine": l_fine.detach(), "w_coarse": wc, "w_fine": wf,
                "scale_coarse": self._scale(self.logit_scale).detach(),
                "scale_fine": self._scale(self.fine_logit_scale).detach()}
        if self.hard_negatives and self.weights["hard_negative"] > 0:
            l_hard = self.hard(img, txt, ids)
            loss = loss + self.weights["hard_negative"] * l_hard
            logs["loss_hard"] = l_hard.detach()
        logs["loss"] = loss.detach()
        return loss, logs
