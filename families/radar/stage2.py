"""Radar stage 2: action recognition from the stage-1 RadarEncoder.

A linear head on the encoder's pooled clip feature, trained as a linear
probe (encoder frozen), fine-tuned, or from scratch (same architecture,
random init). Labels are each clip's action (``label``); only single-action
clips are used, since a clip that chains several actions has no one label.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from data.radar.dataset import collate_radar
from models.radar.clip_model import build_radar_encoder
from training.data import to_device


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


@torch.no_grad()
def evaluate(model, dataset, cfg, device, out_dir=None):
    loader = DataLoader(dataset, batch_size=cfg["eval"]["batch_size"], collate_fn=collate_radar)
    total, correct, n = 0.0, 0, 0
    for batch in loader:
        batch = to_device(batch, device)
        pred = model(batch).float()
        total += F.cross_entropy(pred, batch["label"], reduction="sum").item()
        correct += (pred.argmax(-1) == batch["label"]).sum().item()
        n += len(batch["label"])
    return {"loss": total / max(n, 1), "action_acc": correct / max(n, 1), "num_clips": n}


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
