"""TimesCLIP stage 2 (``train_stage2.py --family timesclip``): the whole
season -> crop yield, on top of the stage-1 encoder (models/timesclip/
yield_head.py). The loop owns optimisation and the encoder's freezing."""
import torch.nn.functional as F

from data.timesclip.dataset import FieldTable, YieldDataset, collate
from families.timesclip.evaluation import yield_metrics
from models.timesclip.model import build_timesclip
from models.timesclip.yield_head import YieldModel


def yield_loss(pred, batch):
    loss = F.mse_loss(pred.float(), batch["yield"].float())   # standardised yield
    return loss, {"mse": loss.detach()}


def build_stage2(cfg, stage1_model_state, mode):
    s2 = cfg["stage2"]
    t = FieldTable.from_config(cfg["data"])
    datasets = {"train": YieldDataset(t, "train", dict(s2["augment"]), seed=cfg["seed"]),
                "val": YieldDataset(t, "val"), "test": YieldDataset(t, "test")}
    encoder = build_timesclip(cfg["model"], cfg["data"])
    if stage1_model_state is not None:
        encoder.load_state_dict(stage1_model_state)   # strict: every stage-1 weight must fit
    model = YieldModel(encoder, t.d["series"].shape[1], s2["use_first_last"],
                       s2["use_forecast_error"], s2["use_raw"], s2["hidden"], s2["dropout"])
    return {"datasets": datasets, "collate": collate, "model": model, "encoder": encoder,
            "loss_fn": yield_loss, "evaluate": yield_metrics}
