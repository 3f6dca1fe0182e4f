"""Stage-1 TimesCLIP objective: forecast MSE + lambda * alignment of the vision
and language views (seed 003, problem 3).

``align_level``:
- ``sample``: mean over variates, a B x B symmetric contrastive loss (ClipLoss,
  exact across ranks) -- balanced positives (1 : B-1) instead of the paper's
  flattened (B*V) x (B*V) matrix;
- ``variate``: inside each sample, a V x V contrastive loss (variate v of the
  chart view against variate v of the token view); no cross-sample term, so
  it needs no gathering;
- ``hierarchical``: ``weights[0] * sample + weights[1] * variate`` (0.7 / 0.3);
- ``none``: MSE only (the "no align" ablation).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from losses.clip_loss import ClipLoss

ALIGN_LEVELS = ("sample", "variate", "hierarchical", "none")


class TimesCLIPLoss(nn.Module):
    def __init__(self, align=True, align_level="hierarchical", align_weight=0.1,
                 level_weights=(0.7, 0.3), init_logit_scale=math.log(1 / 0.07),
                 local_loss=False, gather_with_grad=False, rank=0, world_size=1):
        super().__init__()
        if align_level not in ALIGN_LEVELS:
            raise ValueError(f"loss.align_level: expected one of {ALIGN_LEVELS}, got {align_level!r}")
        self.align = align and align_level != "none"
        self.align_level, self.align_weight = align_level, align_weight
        self.level_weights = tuple(level_weights)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.variate_logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.clip = ClipLoss(local_loss, gather_with_grad, rank=rank, world_size=world_size)

    def sample_loss(self, vis, lang):
        a = F.normalize(vis.float().mean(1), dim=-1)               # [B, E]
        b = F.normalize(lang.float().mean(1), dim=-1)
        return self.clip(a, b, self.logit_scale.exp())

    def variate_loss(self, vis, lang):
        a = F.normalize(vis.float(), dim=-1)                       # [B, V, E]
        b = F.normalize(lang.float(), dim=-1)
        logits = self.variate_logit_scale.exp() * a @ b.transpose(1, 2)   # [B, V, V]
        v = logits.shape[-1]
        labels = torch.arange(v, device=logits.device).expand(logits.shape[0], v)
        return (F.cross_entropy(logits.flatten(0, 1), labels.flatten())
                + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), labels.flatten())) / 2

    def forward(self, features, batch, epoch=0):
        mse = F.mse_loss(features["forecast"].float(), batch["y"].float())
        logs = {"mse": mse.detach()}
        loss = mse
        if self.align:
            if "vision" not in features or "language" not in features:
                raise ValueError("TimesCLIPLoss: align needs both model.use_vision and "
                                 "model.use_language (set loss.align false for a single view)")
            vis, lang = features["vision"], features["language"]
            if self.align_level == "sample":
                align = self.sample_loss(vis, lang)
            elif self.align_level == "variate":
                align = self.variate_loss(vis, lang)
            else:
                s, v = self.sample_loss(vis, lang), self.variate_loss(vis, lang)
                logs.update(align_sample=s.detach(), align_variate=v.detach())
                align = self.level_weights[0] * s + self.level_weights[1] * v
            logs["align"] = align.detach()
            loss = mse + self.align_weight * align
        return loss, logs
