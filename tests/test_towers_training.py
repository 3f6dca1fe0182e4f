"""What trains: freeze, unfreeze_last_n, layer decay and lr_mult groups, eval
mode of frozen parts, activation checkpointing, the log line."""
import pytest
import torch
import torch.nn as nn
from transformers import ViTConfig, ViTModel

from models.towers import VisionTower, tower_lr_mults, tower_summary
from training.optim import build_optimizer, param_groups


def tiny_vit(dropout=0.0, layers=3):
    torch.manual_seed(0)
    return ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                              num_attention_heads=2, image_size=16, patch_size=8,
                              hidden_dropout_prob=dropout, initializer_range=0.3))


class Probe(nn.Module):
    """A tower and a new head, as a family model holds them."""

    def __init__(self, settings, dropout=0.0):
        super().__init__()
        self.vision = VisionTower(settings, backbone=tiny_vit(dropout))
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.vision(x).features)


OPT_CFG = {"lr": 1e-2, "wd": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "lr_multipliers": {}}


def train(model, steps=3):
    opt, _ = build_optimizer({"model": model}, OPT_CFG)
    torch.manual_seed(1)
    x = torch.rand(4, 3, 16, 16)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_frozen_tower_is_bit_identical_and_in_eval_mode_after_steps():
    model = Probe({"freeze": True}, dropout=0.5).train()
    before, head = snapshot(model.vision.backbone), model.head.weight.detach().clone()
    assert not any(m.training for m in model.vision.backbone.modules())
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.vision(x).features, model.vision(x).features)   # no dropout
    train(model)
    assert all(torch.equal(p, before[n]) for n, p in model.vision.backbone.named_parameters())
    assert not torch.equal(model.head.weight, head)
    assert model.vision.frozen


def test_unfrozen_tower_moves_and_keeps_dropout():
    model = Probe({"freeze": False}, dropout=0.5).train()
    before = snapshot(model.vision.backbone)
    x = torch.rand(2, 3, 16, 16)
    assert not torch.equal(model.vision(x).features, model.vision(x).features)
    train(model)
    moved = [n for n, p in model.vision.backbone.named_parameters() if not torch.equal(p, before[n])]
    assert "embeddings.patch_embeddings.projection.weight" in moved
    assert "layers.0.mlp.fc1.weight" in moved


@pytest.mark.parametrize("n", [1, 2])
def test_unfreeze_last_n_trains_exactly_the_last_n_blocks(n):
    model = Probe({"freeze": True, "unfreeze_last_n": n}).train()
    before = snapshot(model.vision.backbone)
    train(model)
    for name, p in model.vision.backbone.named_parameters():
        block = int(name.split(".")[1]) if name.startswith("layers.") else None
        trains = (block is not None and block >= 3 - n) or name.startswith(("layernorm", "pooler"))
        assert p.requires_grad == trains, name
        if not trains:
            assert torch.equal(p, before[name]), name
        elif name.endswith("weight"):
            assert not torch.equal(p, before[name]), name
    # the frozen blocks run in eval mode, the trainable ones follow the model
    assert not model.vision.backbone.layers[0].training
    assert model.vision.backbone.layers[2].training


def test_layer_decay_and_lr_mult_groups_have_the_hand_computed_lrs():
    model = Probe({"layer_decay": 0.5, "lr_mult": 0.1})   # 3 blocks: L = 3
    # the training loop's own groups (training/optim.py), at lr 1
    groups = param_groups({"model": model}, dict(OPT_CFG, lr=1.0, wd=0.05))
    lr = {n: g["lr_mult"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    b = "model.vision.backbone."
    assert lr[b + "embeddings.cls_token"] == pytest.approx(0.1 * 0.5 ** 4)
    assert lr[b + "embeddings.patch_embeddings.projection.weight"] == pytest.approx(0.1 * 0.5 ** 4)
    assert lr[b + "layers.0.mlp.fc1.weight"] == pytest.approx(0.1 * 0.5 ** 3)
    assert lr[b + "layers.2.mlp.fc1.weight"] == pytest.approx(0.1 * 0.5)
    assert lr[b + "layernorm.weight"] == pytest.approx(0.1)
    assert lr["model.head.weight"] == 1.0                    # new layer: no multiplier
    assert wd[b + "layers.0.mlp.fc1.weight"] == 0.05 and wd[b + "layers.0.mlp.fc1.bias"] == 0.0
    assert wd[b + "layernorm.weight"] == 0.0
    assert set(tower_lr_mults({"model": model})) == {n for n in lr if n.startswith(b)}


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = Probe({"freeze": False}).train()
        model.vision.set_grad_checkpointing(ckpt)
        model(torch.ones(2, 3, 16, 16)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert model.vision.backbone.layers[0].gradient_checkpointing
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_summary_line_counts_trainable_and_frozen_parameters():
    model = Probe({"freeze": True, "unfreeze_last_n": 1})
    (line,) = tower_summary({"model": model})
    total = sum(p.numel() for p in model.vision.parameters())
    trainable = sum(p.numel() for p in model.vision.parameters() if p.requires_grad)
    assert line.startswith("model.vision: ViTModel")
    assert f"{total / 1e6:.2f}M params, {trainable / 1e6:.2f}M trainable" in line
    assert "last 1/3 blocks train" in line


def test_tower_runs_under_bf16_autocast_close_to_fp32():
    """--precision amp_bf16: the tower's own embedding path follows autocast."""
    model = Probe({"freeze": False}).eval()
    x = torch.rand(2, 3, 16, 16)
    ref = model.vision(x).features
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.vision(x).features
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=0.1, rtol=0.05)
