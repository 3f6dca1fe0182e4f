"""sCLAP criterion (seed 002, BRIEF sec. 3).

Triplets [pos, neg_t, neg_s] are flattened to 3B clips with their own captions.
    L_ss  symmetric InfoNCE, audio (triplet) embedding vs spatial caption, over 3B
    L_sem symmetric InfoNCE, SED embedding vs plain caption, over 3B
          (plain captions of pos and neg_s are equal: same-id soft targets)
    L_doa 1 - cos, permutation-invariant over the two events, all 3B clips
    L_ts  3-way CE: positive text vs audios [pos, neg_t, neg_s] and positive
          audio vs texts [pos, neg_t, neg_s], logits clamped to +-50
    L_mod BCE-with-logits of the modality classifier (audio 0, text 1); the
          encoders see it reversed through GradientReversal in the model
    L_evt (event_weight > 0, with model.event_slots) per event slot k = 1, 2:
          symmetric InfoNCE over the 3B clips of the audio slot a_k against
          c_k, the encoded single-event caption of the clip's k-th event, and
          of the text slot e_k against the same c_k (same-caption ids are
          positives: neg_t's c_1 is pos's c_2 ...); the mean of the 4 terms.
          A direct, order-free target for each slot on both sides.
total = (1 - w_sem_eff) L_ss + w_sem_eff L_sem + w_doa L_doa + w_ts_eff L_ts + w_mod L_mod
        + w_evt L_evt
with loss_weights = [w_doa, w_sem, w_ts, w_mod], w_sem_eff = 0 before
`sem_start_epoch`, w_ts_eff = w_ts * min(1, (epoch + 1) / ts_ramp_epochs),
w_evt = event_weight from the first step (it is what starts the order).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from losses.clip_loss import ClipLoss


def loss_weights_at(loss_weights, epoch, sem_start_epoch=3, ts_ramp_epochs=4):
    """(w_doa, w_sem_eff, w_ts_eff, w_mod) at this epoch (0-based)."""
    w_doa, w_sem, w_ts, w_mod = loss_weights
    w_sem_eff = 0.0 if epoch < sem_start_epoch else w_sem
    w_ts_eff = w_ts * min(1.0, (epoch + 1) / max(ts_ramp_epochs, 1))
    return w_doa, w_sem_eff, w_ts_eff, w_mod


def doa_loss(pred, target):
    """Permutation-invariant 1 - cos for two events. pred, target [N, 2, 3] -> scalar."""
    p = F.normalize(pred.float(), dim=-1)
    t = target.float()
    same = 2 - (p * t).sum(-1).sum(-1)                       # [N] events in order
    swap = 2 - (p * t.flip(1)).sum(-1).sum(-1)               # [N] events swapped
    return (torch.minimum(same, swap) / 2).mean()


def three_way_loss(audio, text, logit_scale, clamp=50.0):
    """L_ts. audio, text [B, 3, D] L2-normalised, slot 0 = positive."""
    sim_t2a = torch.einsum("bd,bkd->bk", text[:, 0], audio)    # [B, 3] pos text vs 3 audios
    sim_a2t = torch.einsum("bd,bkd->bk", audio[:, 0], text)    # [B, 3] pos audio vs 3 texts
    labels = torch.zeros(audio.shape[0], dtype=torch.long, device=audio.device)
    l_t2a = F.cross_entropy((logit_scale * sim_t2a).clamp(-clamp, clamp).float(), labels)
    l_a2t = F.cross_entropy((logit_scale * sim_a2t).clamp(-clamp, clamp).float(), labels)
    return (l_t2a + l_a2t) / 2


def event_loss(clip, audio_slots, text_slots, event, ids, logit_scale):
    """L_evt. audio_slots, text_slots, event [B, 3, 2, D] (any norm), ids
    [B, 3, 2] the event captions' ids; clip: a ClipLoss (multi-positive)."""
    terms = []
    for k in range(event.shape[2]):
        target = F.normalize(event[:, :, k].float(), dim=-1).flatten(0, 1)            # [3B, D]
        for side in (audio_slots, text_slots):
            slot = F.normalize(side[:, :, k].float(), dim=-1).flatten(0, 1)           # [3B, D]
            terms.append(clip(slot, target, logit_scale, ids=ids[:, :, k].flatten()))
    return sum(terms) / len(terms)


class SCLAPLoss(nn.Module):
    def __init__(self, loss_weights=(1.0, 0.5, 0.2, 0.2), sem_start_epoch=3, ts_ramp_epochs=4,
                 logit_clamp=50.0, init_logit_scale=1 / 0.07, local_loss=False,
                 gather_with_grad=False, rank=0, world_size=1, event_weight=0.0):
        super().__init__()
        if len(loss_weights) != 4:
            raise ValueError(f"loss_weights must be [w_doa, w_sem, w_ts, w_mod], got {loss_weights}")
        self.loss_weights = [float(w) for w in loss_weights]
        self.sem_start_epoch, self.ts_ramp_epochs = sem_start_epoch, ts_ramp_epochs
        self.logit_clamp = logit_clamp
        self.event_weight = float(event_weight)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale)))
        self.clip = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad,
                             rank=rank, world_size=world_size)

    def forward(self, features, batch, epoch=0):
        w_doa, w_sem, w_ts, w_mod = loss_weights_at(self.loss_weights, epoch, self.sem_start_epoch,
                                                    self.ts_ramp_epochs)
        scale = self.logit_scale.exp()
        audio = F.normalize(features["audio"].float(), dim=-1)   # [B, 3, D]
        text = F.normalize(features["text"].float(), dim=-1)
        sed = F.normalize(features["sed"].float(), dim=-1)
        plain = F.normalize(features["plain"].float(), dim=-1)
        l_ss = self.clip(audio.flatten(0, 1), text.flatten(0, 1), scale,
                         ids=batch["caption_ids"].flatten())
        l_sem = self.clip(sed.flatten(0, 1), plain.flatten(0, 1), scale,
                          ids=batch["plain_ids"].flatten())
        l_doa = doa_loss(features["doa"].flatten(0, 1), batch["doa"].flatten(0, 1))
        l_ts = three_way_loss(audio, text, scale, self.logit_clamp)
        total = (1 - w_sem) * l_ss + w_sem * l_sem + w_doa * l_doa + w_ts * l_ts
        logs = {"loss_ss": l_ss.detach(), "loss_sem": l_sem.detach(), "loss_doa": l_doa.detach(),
                "loss_ts": l_ts.detach(), "w_sem_eff": w_sem, "w_ts_eff": w_ts,
                "logit_scale": scale.detach()}
        if "mod_audio" in features:
            logits = torch.cat([features["mod_audio"].flatten(), features["mod_text"].flatten()]).float()
            labels = torch.cat([torch.zeros(features["mod_audio"].numel()),
                                torch.ones(features["mod_text"].numel())]).to(logits.device)
            l_mod = F.binary_cross_entropy_with_logits(logits, labels)
            total = total + w_mod * l_mod
            logs["loss_mod"] = l_mod.detach()
            logs["mod_acc"] = ((logits > 0).float() == labels).float().mean().detach()
        if self.event_weight > 0:
            missing = [k for k in ("audio_slots", "text_slots", "event") if k not in features]
            if missing:
                raise ValueError(f"loss.event_weight {self.event_weight} needs the model's event slots "
                                 f"(model.event_slots true) and the batch's event captions; the "
                                 f"features lack {missing}")
            l_evt = event_loss(self.clip, features["audio_slots"], features["text_slots"],
                               features["event"], batch["event_ids"], scale)
            total = total + self.event_weight * l_evt
            logs["loss_evt"] = l_evt.detach()
        logs["loss"] = total.detach()
        return total, logs
