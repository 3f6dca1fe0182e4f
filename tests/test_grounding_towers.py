"""Grounding on pretrained towers (issue 11): a tiny CLIP folder (random
weights, save_pretrained) through model.vision / model.text, the real loop,
checkpoint, resume and eval.py; what is frozen stays bit-identical; entity
spans reach the CLIP tokenizer's tokens."""
import json
import os

import pytest
import torch
from torchvision.ops import roi_align
from transformers import CLIPTextModel, CLIPVisionModel

import eval as eval_py
import families.grounding as fam
import train_stage1
from models.grounding.model import GroundingModel
from tests.test_grounding_train import TINY
from tests.test_grounding_model import _batch
from tests.tiny_towers import save_tiny_clip, save_tiny_vit
from training.checkpoint import load_checkpoint
from training.config import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_clip")
    # 32 px: the runs' data.image_size, native; 128 positions: the tiny vocabulary
    # spells most words letter by letter, and no caption is cut
    save_tiny_clip(path, image_size=32, max_positions=128)
    return str(path)


def _weights(prefix, state):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _run(tmp, name, *extra):
    return train_stage1.main(["--family", "grounding", "--data.root", str(tmp / "data"), "--logs",
                              str(tmp / "logs"), "--name", name, "--batch-size", "2",
                              "--max-nonfinite", "1", "--lr", "1e-2", "--warmup", "0",
                              "--min-lr-ratio", "1.0",   # constant lr: the resumed step moves
                              "--precision", "fp32", *TINY, *extra])


@pytest.mark.parametrize("pooling", ["crop", "roi_align"])
def test_frozen_clip_vision_tower_trains_resumes_and_evaluates(clip_dir, tmp_path, pooling):
    run = _run(tmp_path, "frozen", "--max-steps", "2", "--model.object_pooling", pooling,
               "--model.vision.pretrained", clip_dir, "--model.vision.freeze", "true")
    saved = CLIPVisionModel.from_pretrained(clip_dir).state_dict()
    ck = load_checkpoint(os.path.join(run, "checkpoints", "latest.pt"))
    tower = _weights("visual.backbone.", ck["model"])
    assert set(tower) == set(saved)
    for k, v in saved.items():   # bit-identical after 2 steps
        assert torch.equal(tower[k], v), k
    proj = ck["model"]["image_proj.weight"]
    # --resume latest: the tower is rebuilt from the folder, the checkpoint loads over it
    run = _run(tmp_path, "frozen", "--max-steps", "3", "--model.object_pooling", pooling,
               "--model.vision.pretrained", clip_dir, "--model.vision.freeze", "true",
               "--resume", "latest")
    ck = load_checkpoint(os.path.join(run, "checkpoints", "latest.pt"))
    assert ck["train_state"]["step"] == 3
    assert not torch.equal(ck["model"]["image_proj.weight"], proj)   # the new layers train
    assert all(torch.equal(_weights("visual.backbone.", ck["model"])[k], v) for k, v in saved.items())
    out = tmp_path / "eval"
    eval_py.main(["--checkpoint", os.path.join(run, "checkpoints", "latest.pt"), "--out", str(out),
                  "--device", "cpu"])
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert 0 <= metrics["entity_object_acc"] <= 1 and metrics["gallery_size"] == 2
    assert os.path.getsize(out / "entity_heatmaps.png") > 1000   # drawn on the tower's 4x4 grid


def test_clip_text_tower_with_a_trained_vision_tower(clip_dir, tmp_path):
    """Both towers of one CLIP folder: the image tower trains (it moves), the
    text tower is frozen (model.text.freeze true, the default: bit-identical)."""
    run = _run(tmp_path, "both", "--max-steps", "2", "--model.vision.pretrained", clip_dir,
               "--model.text.pretrained", clip_dir)
    ck = load_checkpoint(os.path.join(run, "checkpoints", "latest.pt"))
    vision = _weights("visual.backbone.", ck["model"])
    for k, v in CLIPVisionModel.from_pretrained(clip_dir).state_dict().items():
        if k.endswith("weight") and "norm" not in k:
            assert not torch.equal(vision[k], v), k   # every matrix moved
    text = _weights("text.backbone.", ck["model"])
    saved = CLIPTextModel.from_pretrained(clip_dir).state_dict()
    assert set(text) == set(saved)
    for k, v in saved.items():
        assert torch.equal(text[k], v), k


def test_entity_spans_map_to_the_clip_tokenizers_tokens(clip_dir, tmp_path):
    """Every phrase's token mask holds exactly the tokens whose characters lie
    in the phrase: the tokens' characters spell the phrase (spaces aside)."""
    cfg = load_config(["--family", "grounding", "--data.root", str(tmp_path / "data"), *TINY,
                       "--model.text.pretrained", clip_dir, "--model.text.max_length", "128"])
    fam.prepare_data(cfg)
    ds = fam.build_datasets(cfg)["train"]
    model = fam.build_model(cfg).eval()
    assert type(model.text).__name__ == "TextTower" and model.text.frozen
    items = [ds.get(i, c) for i in range(4) for c in range(2)]
    batch = fam.collate(items)
    with torch.no_grad():
        out = model.text(batch["caption"])
        _, _, ok, _, tmask = model.encode_text(batch["caption"], batch["entity_spans"],
                                               batch["entity_valid"])
    assert out.mask.sum(1).max() < 128   # nothing truncated: every phrase is whole
    checked = 0
    for b, cap in enumerate(batch["caption"]):
        for e in range(tmask.shape[1]):
            if not batch["entity_valid"][b, e]:
                continue
            s, t = batch["entity_spans"][b, e].tolist()
            spelt = "".join(cap[a:z] for (a, z), m in zip(out.offsets[b].tolist(), tmask[b, e]) if m)
            assert spelt == cap[s:t].replace(" ", ""), (cap, cap[s:t], spelt)
            assert ok[b, e]
            checked += 1
    assert checked >= 8


def test_tower_keys_a_scratch_tower_cannot_honour_are_refused(tmp_path):
    cfg = load_config(["--family", "grounding", "--data.root", str(tmp_path / "data"), *TINY,
                       "--model.vision.lr_mult", "0.1"])
    with pytest.raises(ValueError, match="model.vision.lr_mult=0.1 needs model.vision.pretrained"):
        fam.build_model(cfg)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit")
    save_tiny_vit(path, image_size=64)   # native 64 px, an 8x8 grid: the data's 32 px are resized
    return str(path)


@pytest.mark.parametrize("pooling", ["roi_align", "crop"])
def test_vit_tower_forward_is_per_sample_and_pools_its_own_grid(vit_dir, pooling):
    """The contract on a ViTModel tower: masks drawn on the data's 4x4 grid,
    boxes in the data's 32 px; RoI Align reads the tower's 8x8 grid."""
    torch.manual_seed(0)
    model = GroundingModel(image_size=32, patch_size=8, embed_dim=32, object_pooling=pooling,
                           cross_attention=True, vision={"pretrained": vit_dir}).eval()
    assert model.patch_grid == (8, 8) and model.visual.hidden_size == 32
    batch = _batch()
    full = model(batch)
    assert full["object_features"].shape == (3, 3, 32)
    for i in range(3):
        one = model({k: v[i:i + 1] for k, v in batch.items()})
        for k in ("image_features", "object_features", "masked_image_features"):
            torch.testing.assert_close(one[k][0], full[k][i], rtol=1e-4, atol=1e-4)
    if pooling == "roi_align":   # box (2, 2, 14, 14) of 32 px = (4, 4, 28, 28) on the native 64 px
        _, patches = model.encode_image(batch["image"], batch["patch_mask"])
        grid = patches.transpose(1, 2).reshape(3, 32, 8, 8)
        ref = roi_align(grid, [torch.tensor([[4.0, 4, 28, 28]])] * 3, 2, 1 / 8, aligned=True)
        torch.testing.assert_close(full["object_features"][:, 0], model.object_proj(ref.mean((2, 3))))
    else:   # box 0 cropped from the [0, 1] image and resized to the native 64 px, encoded alone
        crop = roi_align((batch["image"] + 1) / 2, [torch.tensor([[2.0, 2, 14, 14]])] * 3, 64,
                         aligned=True)
        ref = model.visual(crop).features
        torch.testing.assert_close(full["object_features"][:, 0], model.object_proj(ref))


def test_a_checkpoint_config_from_before_the_tower_sections_still_builds(tmp_path):
    """eval.py builds the model from the checkpoint's own config: the old
    model.text keys (model_name, freeze_backbone) give today's frozen MiniLM."""
    cfg = load_config(["--family", "grounding", "--data.root", str(tmp_path / "data"), *TINY])
    text = {k: v for k, v in cfg["model"]["text"].items() if k not in ("pretrained", "freeze")}
    cfg["model"]["text"] = dict(text, model_name=None, freeze_backbone=True)
    model = fam.build_model(cfg)
    assert type(model.text).__name__ == "TextEncoder" and model.text.frozen
    assert model.text.max_length == 32
