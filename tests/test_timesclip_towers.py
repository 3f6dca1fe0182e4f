"""TimesCLIP on pretrained towers (issue 11): a tiny CLIP folder (random
weights, save_pretrained) behind the charts (model.vision, frozen, features
cached) and the patch tokens (model.language: CLIP's text transformer fed
by the linear patch tokenizer), through the real loop, resume and eval.py;
activation checkpointing changes no number."""
import json
import os

import pytest
import torch
from transformers import CLIPTextModel, CLIPVisionModel
from transformers.modeling_layers import GradientCheckpointingLayer

import eval as eval_py
import train_stage1
from data.timesclip.dataset import collate
from families import timesclip as fam
from models.timesclip.model import TimesCLIP, build_timesclip
from tests.test_timesclip_model import HOST_READS, SMALL, _items
from tests.test_timesclip_stage2 import TINY
from tests.tiny_towers import save_tiny_clip
from training.checkpoint import load_checkpoint
from training.config import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_clip")
    save_tiny_clip(path, image_size=16)   # TINY's 16 px charts: the tower's native size
    return str(path)


def _weights(prefix, state):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_frozen_chart_tower_and_clip_language_body_train_resume_and_evaluate(clip_dir, tmp_path):
    args = ["--family", "timesclip", "--data.root", str(tmp_path / "data"), *TINY,
            "--logs", str(tmp_path / "logs"), "--name", "clip", "--precision", "fp32",
            "--batch-size", "8", "--val-every", "0", "--max-nonfinite", "1",
            "--min-lr-ratio", "1.0", "--warmup", "0",    # constant lr: the resumed step moves
            "--model.vision.pretrained", clip_dir, "--model.vision.freeze", "true",
            "--model.language.pretrained", clip_dir]
    run = train_stage1.main(args + ["--max-steps", "2"])
    ck = load_checkpoint(os.path.join(run, "checkpoints", "latest.pt"))
    vision = _weights("vision.body.backbone.", ck["model"])
    saved = CLIPVisionModel.from_pretrained(clip_dir).state_dict()
    assert set(vision) == set(saved)
    for k, v in saved.items():                      # frozen: bit-identical
        assert torch.equal(vision[k], v), k
    text = _weights("language.body.backbone.", ck["model"])
    for k, v in CLIPTextModel.from_pretrained(clip_dir).state_dict().items():
        if "token_embedding" in k:   # never read (the patch tokenizer replaces it): not trained
            assert torch.equal(text[k], v), k
        elif k.endswith("weight") and "norm" not in k:
            assert not torch.equal(text[k], v), k   # the body trains
    # resumed with activation checkpointing (a resource a resumed run may change)
    run = train_stage1.main(args + ["--max-steps", "3", "--resume", "latest", "--grad-checkpointing"])
    ck3 = load_checkpoint(os.path.join(run, "checkpoints", "latest.pt"))
    assert ck3["train_state"]["step"] == 3
    assert all(torch.equal(_weights("vision.body.backbone.", ck3["model"])[k], v)
               for k, v in saved.items())
    assert not torch.equal(ck3["model"]["vision.proj.weight"], ck["model"]["vision.proj.weight"])
    out = tmp_path / "eval"
    eval_py.main(["--checkpoint", os.path.join(run, "checkpoints", "latest.pt"), "--out", str(out),
                  "--device", "cpu"])
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["completion_rmse"] > 0 and "v2l_R@1" in metrics


def _loss_and_grads(cfg, batch, checkpointing):
    torch.manual_seed(0)
    model, crit = fam.build_model(cfg).train(), fam.build_criterion(cfg)
    model.set_grad_checkpointing(checkpointing)
    loss, _ = crit(model(batch), batch)
    loss.backward()
    return model, loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_keeps_the_loss_and_gradients(clip_dir, tmp_path):
    """Pretrained chart tower (trained: its blocks are checkpointed) and CLIP
    language body; and the bodies from scratch."""
    base = ["--family", "timesclip", "--data.root", str(tmp_path / "data"), *TINY,
            "--model.dropout", "0.0", "--precision", "fp32"]
    for extra in (["--model.vision.pretrained", clip_dir, "--model.language.pretrained", clip_dir], []):
        cfg = load_config(base + extra)
        fam.prepare_data(cfg)
        ds = fam.build_datasets(cfg)["train"]
        batch = fam.collate([ds[i] for i in range(6)])
        _, loss, grads = _loss_and_grads(cfg, batch, False)
        model, loss_c, grads_c = _loss_and_grads(cfg, batch, True)
        if extra:   # the flag reached the towers' blocks
            for body in (model.vision.body, model.language.body):
                blocks = [m for m in body.modules() if isinstance(m, GradientCheckpointingLayer)]
                assert len(blocks) == 2 and all(m.gradient_checkpointing for m in blocks)
        else:
            assert model.language.grad_checkpointing and model.vision.body.grad_checkpointing
        torch.testing.assert_close(loss_c, loss, atol=1e-5, rtol=0)
        assert set(grads_c) == set(grads) and any("body" in n for n in grads)
        # every trainable parameter gets a gradient (DDP without find_unused_parameters)
        assert set(grads) == {n for n, p in model.named_parameters() if p.requires_grad}
        for n, g in grads.items():
            torch.testing.assert_close(grads_c[n], g, atol=1e-5, rtol=1e-4, msg=n)


def test_frozen_pretrained_chart_cache_reads_nothing_back_from_the_device(clip_dir, monkeypatch):
    """The cached step of a frozen CLIP chart tower: host keys, device gather."""
    m = TimesCLIP(**dict(SMALL, vision={"pretrained": clip_dir, "freeze": True})).train()
    assert m.vision.freeze and not m.vision.body.backbone.training   # frozen: eval mode
    batch = collate(_items(4))
    first = m(batch)
    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, lambda *a, _n=name, **k: pytest.fail(f"host read: {_n}"))
    second = m(batch)
    monkeypatch.undo()
    assert len(m.vision.index) == 4
    for k in first:
        if k != "forecast":    # the language branch's dropout draws anew
            assert torch.equal(first[k], second[k]), k


def test_a_checkpoint_config_from_before_the_tower_sections_still_builds(tmp_path):
    """Stage 2 --init and eval.py build the model from the checkpoint's own
    config: the old keys (freeze_vision, vision_backbone, language_backbone)
    give today's sections, and the old weights load strictly."""
    cfg = load_config(["--family", "timesclip", "--data.root", str(tmp_path / "data"), *TINY,
                       "--model.vision.freeze", "true"])
    new = fam.build_model(cfg).eval()
    old = {k: v for k, v in cfg["model"].items() if k not in ("vision", "language")}
    old.update(vision_backbone="vit", freeze_vision=True, language_backbone="scratch")
    model = build_timesclip(old, cfg["data"]).eval()
    assert model.vision.freeze and not model.language.pretrained
    model.load_state_dict(new.state_dict())
    x = torch.randn(2, 18, 7)
    torch.testing.assert_close(model({"x": x})["forecast"], new({"x": x})["forecast"])
