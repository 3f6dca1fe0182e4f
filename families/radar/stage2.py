"""Radar stage 2: action recognition from the stage-1 RadarEncoder.

A linear head on the encoder's pooled clip feature, trained as a linear
probe (encoder frozen), fine-tuned, or from scratch (same architecture,
random init). Labels are each clip's action (``label``); only single-action
clips are used, since a clip that chains several actions has no one label.
"""
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

from data.radar.dataset import collate_radar
from models.radar.clip_model import build_radar_encoder
from training.evaluation import encode_split


class ActionClassifier(nn.Module):
    def __init__(self, encoder, num_classes):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)

    def forward(self, batch):
        views = {v: batch[v] for v in self.encoder.views}
        return self.head(self.encoder(views, batch["radar_mask"]).features)  # [B, C]


def single_action(dataset):
    """The single-action clips of a split (from the loader's action lists)."""
    return Subset(dataset, [i for i, it in enumerate(dataset.base.items) if len(it["actions"]) == 1])


def loss_fn(pred, batch):
    loss = F.cross_entropy(pred.float(), batch["label"])
    acc = (pred.argmax(-1) == batch["label"]).float().mean()
    return loss, {"ce": loss.detach(), "acc": acc.detach()}


def evaluate(model, dataset, cfg, device, out_dir=None):
    """Cross-entropy and accuracy over the split, encoded under the run's precision."""
    out = encode_split(model, dataset, collate_radar, cfg, device,
                       forward=lambda m, b: {"logits": m(b), "label": b["label"]})
    if not out:
        return {"loss": 0.0, "action_acc": 0.0, "num_clips": 0}
    logits, label = out["logits"], out["label"]  # [N, C], [N]
    return {"loss": F.cross_entropy(logits, label).item(),
            "action_acc": (logits.argmax(-1) == label).float().mean().item(),
            "num_clips": len(label)}


def build_radar_stage2(cfg, splits, stage1_model_state, mode):
    """splits: the family's {split: TemporalNegatives} datasets."""
    names = splits["train"].base.action_names
    if not names:
        raise FileNotFoundError(f"{splits['train'].base.root}/data_info.json: missing or without 'actions'; "
                                "stage 2 needs the action names as class labels")
    encoder = build_radar_encoder(cfg)
    if mode != "scratch":
        if stage1_model_state is None:
            raise ValueError(f"stage 2 mode {mode!r} needs the stage-1 model state")
        prefix = "radar_encoder."
        state = {k[len(prefix):]: v for k, v in stage1_model_state.items() if k.startswith(prefix)}
        encoder.load_state_dict(state)
    datasets = {k: single_action(v) for k, v in splits.items()}
    return {"datasets": datasets, "collate": collate_radar,
            "model": ActionClassifier(encoder, len(names)), "encoder": encoder,
            "loss_fn": loss_fn, "evaluate": evaluate}
