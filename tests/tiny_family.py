"""A tiny family for testing the loop: paired random vectors, two MLP towers.

x ~ N(0, I) and y = W x + noise, so a well-trained pair of towers retrieves
y from x far above chance. Dropout is on, so accumulation must replay RNG.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from losses import ClipLoss, SigLipLoss
from training.data import item_rng
from training.metrics import retrieval_metrics


class PairDataset(Dataset):
    def __init__(self, n, seed, dim_x=16, dim_y=12, noise=0.1, duplicates=0, delay_ms=0):
        self.delay_ms = delay_ms
        g = torch.Generator().manual_seed(1234)  # one W for every split
        self.w = torch.randn(dim_y, dim_x, generator=g)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim_x, generator=g)
        self.y = self.x @ self.w.T + noise * torch.randn(n, dim_y, generator=g)
        self.ids = torch.arange(n)
        if duplicates:  # the first `duplicates` items repeat item 0's target
            self.y[:duplicates] = self.y[0]
            self.ids[:duplicates] = 0
        self.epoch, self.seed = 0, seed

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        # a per-item jitter drawn from item_rng: tests that resumption replays it
        jitter = float(item_rng(self.seed, self.epoch, i).normal()) * 0.01
        if self.delay_ms:  # slow loading, for tests that must catch a run mid-way
            import time
            time.sleep(self.delay_ms / 1000)
        return {"x": self.x[i] + jitter, "y": self.y[i], "id": int(self.ids[i])}


def collate(items):
    return {"x": torch.stack([it["x"] for it in items]),
            "y": torch.stack([it["y"] for it in items]),
            "id": torch.tensor([it["id"] for it in items])}


def prepare_data(cfg):
    """Nothing on disk: the tiny family's data is made in memory by build_datasets."""


def build_datasets(cfg):
    d = cfg["data"]
    return {"train": PairDataset(d["num_train"], 0, duplicates=d.get("duplicates", 0),
                                 delay_ms=d.get("delay_ms", 0)),
            "val": PairDataset(d["num_val"], 1), "test": PairDataset(d["num_val"], 2)}


class Towers(nn.Module):
    def __init__(self, dim, dropout, inject_nan_item=None):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(32),
                               nn.Linear(32, dim))
        self.b = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, dim))

    def set_grad_checkpointing(self, enable=True):
        self.checkpointing = enable

    def forward(self, batch):
        a, b = batch["x"], batch["y"]
        if getattr(self, "checkpointing", False) and self.training:
            from torch.utils.checkpoint import checkpoint
            fa = checkpoint(self.a, a, use_reentrant=False)
        else:
            fa = self.a(a)
        return {"a": F.normalize(fa, dim=-1), "b": F.normalize(self.b(b), dim=-1)}


def build_model(cfg):
    return Towers(cfg["model"]["embed_dim"], cfg["model"]["dropout"])


class Criterion(nn.Module):
    def __init__(self, cfg, rank, world_size):
        super().__init__()
        lc = cfg["loss"]
        self.siglip = lc["use_siglip"]
        # a NaN loss from training call inject_nan_from on, for inject_nan_count calls
        # (None: for ever), on rank inject_nan_rank only (None: every rank)
        self.inject_nan_from = lc.get("inject_nan_from")
        self.inject_nan_count = lc.get("inject_nan_count")
        self.inject = lc.get("inject_nan_rank") in (None, rank)
        self.calls = 0
        if self.siglip:
            self.loss = SigLipLoss(rank=rank, world_size=world_size)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        else:
            self.loss = ClipLoss(local_loss=cfg["local_loss"], gather_with_grad=cfg["gather_with_grad"],
                                 rank=rank, world_size=world_size)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, features, batch, epoch):
        if self.siglip:
            loss = self.loss(features["a"], features["b"], self.logit_scale.exp(), self.logit_bias)
        else:
            loss = self.loss(features["a"], features["b"], self.logit_scale.exp(), ids=batch["id"])
        if self.training:
            self.calls += 1
            start, count = self.inject_nan_from, self.inject_nan_count
            if (self.inject and start is not None and self.calls > start
                    and (count is None or self.calls <= start + count)):
                loss = loss * float("nan")
        return loss, {"loss_contrastive": loss.detach()}


def build_criterion(cfg, rank, world_size):
    return Criterion(cfg, rank, world_size)


@torch.no_grad()
def evaluate(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    model.eval()
    batch = collate([dataset[i] for i in range(len(dataset))])
    f = model({k: v.to(device) for k, v in batch.items()})
    m = retrieval_metrics(f["b"], f["a"], torch.arange(len(dataset)))
    return {"t2i_R@1": m["t2i_R@1"], "t2i_R@10": m["t2i_R@10"]}


class Probe(nn.Module):
    """Stage 2 of the tiny family: regress sum(x) from the stage-1 x-tower."""

    def __init__(self, cfg):
        super().__init__()
        self.encoder = build_model(cfg).a
        self.head = nn.Linear(cfg["model"]["embed_dim"], 1)

    def forward(self, batch):
        return self.head(self.encoder(batch["x"])).squeeze(-1)


def build_stage2(cfg, state, mode):
    model = Probe(cfg)
    if state is not None:
        model.encoder.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("a.")})

    def loss_fn(pred, batch):
        loss = F.mse_loss(pred, batch["x"].sum(-1))
        return loss, {"mse": loss.detach()}

    @torch.no_grad()
    def evaluate_stage2(model, dataset, cfg, device, out_dir=None):
        batch = collate([dataset[i] for i in range(len(dataset))])
        pred = model({k: v.to(device) for k, v in batch.items()})
        return {"loss": F.mse_loss(pred, batch["x"].sum(-1).to(device)).item()}

    ds = build_datasets(cfg)
    return {"datasets": ds, "collate": collate, "model": model, "encoder": model.encoder,
            "loss_fn": loss_fn, "evaluate": evaluate_stage2}
