"""Radar CLIP criterion: every cross-sample term of the radar family.

loss = CLIP or SigLIP on the global features (seed 001 sec. 3.4, both
       directions; duplicate captions in a batch are positives, not negatives)
     + sequence_similarity_weight * symmetric CE on the SequenceSimilarity
       B x B matrix (seed 001 sec. 4.4; mmExpert used one direction only)
     + temporal_negative_weight * hard-negative terms (seed 000 sec. 3.1):
       the clip must prefer its caption to the order-swapped caption, and the
       caption must prefer the clip to the time-reversed clip
     + consistency_weight * (1 - cos) between a clip and its temporally
       perturbed copy (seed 000 sec. 3.2).

Owns the learnable ``logit_scale`` (a log; the loop clamps it to log 100),
the SigLIP ``logit_bias`` and the SequenceSimilarity head with its own scale.

Distributed: every term is the single-process loss on the global batch
(mean over ranks of the per-rank losses, and of their gradients, as DDP
takes it). The global term is ClipLoss/SigLipLoss's; the sequence matrix
gathers the token features of every rank (text tokens padded to the longest
across ranks) with ClipLoss's flags: by default other ranks' features are
constants, the global matrix is computed on every rank and this rank's
feature gradient is multiplied by world_size; ``gather_with_grad`` gathers
with gradient; ``local_loss`` computes only this rank's rows and columns.
The temporal-negative term is per sample, divided by the global number of
multi-action clips; consistency is a per-sample mean (equal shards).
"""
import math
import zlib

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from losses import ClipLoss, SigLipLoss
from losses.distributed import gather_for_loss
from models.radar.sequence_similarity import SequenceSimilarity


def caption_ids(captions, device):
    """Equal caption strings share an id: in-batch duplicates become positives.
    A hash of the string, not a running index, so ids agree across ranks."""
    return torch.tensor([zlib.crc32(c.encode()) & 0x7FFFFFFF for c in captions],
                        dtype=torch.long, device=device)


def soft_ce(logits, row_ids, col_ids):
    """Mean CE of [n, N] logit rows with soft targets spread over every column
    that shares the row's id."""
    pos = (row_ids.unsqueeze(1) == col_ids.unsqueeze(0)).float()
    return -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()


def multi_positive_ce(logits, ids):
    """Symmetric CE on a [B, B] logit matrix with soft targets spread over every
    column/row that shares the row's id."""
    return (soft_ce(logits, ids, ids) + soft_ce(logits.t(), ids, ids)) / 2


class RadarContrastiveLoss(nn.Module):
    def __init__(self, embed_dim, use_siglip=False, temperature=0.07,
                 use_sequence_similarity=False, sequence_similarity_type="combined",
                 sequence_similarity_weight=0.5, sequence_similarity_window_size=4,
                 sequence_similarity_temperature=0.07, temporal_negative_weight=0.0,
                 consistency_weight=0.0, rank=0, world_size=1, local_loss=False,
                 gather_with_grad=False):
        super().__init__()
        if local_loss and not gather_with_grad:
            raise ValueError("RadarContrastiveLoss(local_loss=True, gather_with_grad=False) gives "
                             "wrong gradients (see losses/clip_loss.py); use --local-loss with "
                             "--gather-with-grad, or leave --local-loss off")
        self.rank, self.world_size = rank, world_size
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.use_siglip = use_siglip
        if use_siglip:
            # SigLIP's init (log 10 scale, -10 bias); both are in the optimizer.
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
            self.global_loss = SigLipLoss(rank=rank, world_size=world_size)
        else:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
            self.global_loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad,
                                        rank=rank, world_size=world_size)
        self.seq_weight = sequence_similarity_weight if use_sequence_similarity else 0.0
        self.seq = None
        if use_sequence_similarity:
            self.seq = SequenceSimilarity(embed_dim, sequence_similarity_type,
                                          sequence_similarity_window_size,
                                          sequence_similarity_temperature)
            self.seq_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.temporal_negative_weight = temporal_negative_weight
        self.consistency_weight = consistency_weight

    # --- scores used by training and by evaluation ---------------------------
    def global_scores(self, radar_feat, text_feat):
        return F.normalize(radar_feat, dim=-1) @ F.normalize(text_feat, dim=-1).t()

    def pair_scores(self, f, radar="radar", text="text"):
        """Per-sample cosine of radar i with text i: the global one and, with
        sequence similarity on, the sequence one ([B] each)."""
        g = (F.normalize(f[f"{radar}_features"], dim=-1)
             * F.normalize(f[f"{text}_features"], dim=-1)).sum(-1)
        s = None
        if self.seq is not None:
            s = self.seq.paired(f[f"{radar}_seq"], f[f"{radar}_mask"],
                                f[f"{text}_tokens"], f[f"{text}_mask"])
        return g, s

    def fused(self, g, s):
        """The configured similarity: global cosine, plus the sequence score
        with the weight it has in the loss (both are cosines)."""
        return g if s is None else g.float() + s

    # --- across ranks ------------------------------------------------------------
    def _gather(self, x):
        """[n, ...] -> [world_size * n, ...] in rank order (losses/distributed.py)."""
        return gather_for_loss(x, self.rank, self.world_size, self.gather_with_grad)

    def _gather_seq(self, x, mask):
        """Token features [n, L, D] and mask [n, L], L differing across ranks ->
        [N, L_max, D], [N, L_max] (zero padding, masked)."""
        if self.world_size > 1:
            L = torch.tensor(x.shape[1], device=x.device)
            dist.all_reduce(L, op=dist.ReduceOp.MAX)
            pad = int(L) - x.shape[1]
            x, mask = F.pad(x, (0, 0, 0, pad)), F.pad(mask, (0, pad))
        return self._gather(x), self._gather(mask)

    def _global_count(self, n):
        """The sum of the int tensor ``n`` over ranks."""
        if self.world_size > 1:
            n = n.clone()
            dist.all_reduce(n)
        return n

    def sequence_loss(self, f, ids):
        """Multi-positive CE on the SequenceSimilarity matrix of the global batch."""
        rs, rm = self._gather_seq(f["radar_seq"], f["radar_mask"])       # [N, T, D], [N, T]
        ts, tm = self._gather_seq(f["text_tokens"], f["text_mask"])      # [N, L, D], [N, L]
        all_ids = self._gather(ids)
        scale = self.seq_logit_scale.exp()
        if self.local_loss and self.world_size > 1:
            own = slice(self.rank * len(ids), (self.rank + 1) * len(ids))
            r2t = self.seq(rs[own], rm[own], ts, tm)                      # [n, N]
            t2r = self.seq(rs, rm, ts[own], tm[own]).t()                  # [n, N]
            return (soft_ce(scale * r2t, ids, all_ids) + soft_ce(scale * t2r, ids, all_ids)) / 2
        return multi_positive_ce(scale * self.seq(rs, rm, ts, tm), all_ids)  # [N, N]

    # --- the loss ---------------------------------------------------------------
    def forward(self, f, batch, epoch=0):
        r = F.normalize(f["radar_features"], dim=-1)  # [B, D]
        t = F.normalize(f["text_features"], dim=-1)   # [B, D]
        scale = self.logit_scale.exp()
        if self.use_siglip:
            loss_global = self.global_loss(r, t, scale, self.logit_bias)
        else:
            ids = caption_ids(batch["caption"], r.device)
            loss_global = self.global_loss(r, t, scale, ids=ids)
        logs = {"loss_clip": loss_global.detach(), "logit_scale": scale.detach()}
        loss = loss_global
        if self.seq is not None:
            loss_seq = self.sequence_loss(f, caption_ids(batch["caption"], r.device))
            loss = loss + self.seq_weight * loss_seq
            logs["loss_seq"] = loss_seq.detach()
        if self.temporal_negative_weight > 0 and "swap_features" in f:
            loss_tn = self.temporal_negative_loss(f, batch, scale)
            loss = loss + self.temporal_negative_weight * loss_tn
            logs["loss_temporal_neg"] = loss_tn.detach()
        if self.consistency_weight > 0 and "aug_features" in f:
            a = F.normalize(f["aug_features"], dim=-1)
            loss_cons = (1 - (r * a).sum(-1)).mean()
            loss = loss + self.consistency_weight * loss_cons
            logs["loss_consistency"] = loss_cons.detach()
        logs["loss_total"] = loss.detach()
        return loss, logs

    def temporal_negative_loss(self, f, batch, scale):
        """Two-way CE, per multi-action clip: (clip, caption) against (clip,
        order-swapped caption) and against (time-reversed clip, caption), on the
        same fused score that evaluation ranks by. The sum over this rank's
        clips is divided by the global count (times world_size: DDP averages)."""
        has = batch["has_swap"].to(f["radar_features"].device)  # [B] bool
        count = int(self._global_count(has.sum()))
        if count == 0:
            return f["radar_features"].sum() * 0.0
        pos = self.fused(*self.pair_scores(f))
        swap = self.fused(*self.pair_scores(f, text="swap"))
        rev = self.fused(*self.pair_scores(f, radar="rev"))
        # The contrastive scale, detached: these terms must not drive the temperature.
        s = scale.detach()
        l = F.softplus(s * (swap - pos)) + F.softplus(s * (rev - pos))  # [B]
        return (l * has).sum() * self.world_size / count


def build_radar_criterion(cfg, rank=0, world_size=1):
    L = cfg["loss"]
    return RadarContrastiveLoss(
        cfg["model"]["embed_dim"], use_siglip=L["use_siglip"], temperature=L["temperature"],
        use_sequence_similarity=L["use_sequence_similarity"],
        sequence_similarity_type=L["sequence_similarity_type"],
        sequence_similarity_weight=L["sequence_similarity_weight"],
        sequence_similarity_window_size=L["sequence_similarity_window_size"],
        sequence_similarity_temperature=L["sequence_similarity_temperature"],
        temporal_negative_weight=L["temporal_negative_weight"],
        consistency_weight=L["consistency_weight"], rank=rank, world_size=world_size,
        local_loss=cfg.get("local_loss", False), gather_with_grad=cfg.get("gather_with_grad", False))
