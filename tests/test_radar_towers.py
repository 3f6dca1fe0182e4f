"""Radar on pretrained towers (issue 11): model.radar (a ViTModel /
CLIPVisionModel folder -> RadarTower on the maps) and model.text in the tower
schema (a CLIP folder -> its text tower), through train_stage1 / --resume /
eval.py / stage 2, with tiny random-weight folders written by save_pretrained.
A checkpoint from before the tower sections still evaluates and resumes."""
import glob
import json
import os

import pytest
import torch

import eval as eval_script
import families.radar as fam
import train_stage1
import train_stage2
from training.text_cache import text_cache_path
from models.radar.clip_model import content_token_mask
from models.radar.encoder import RadarEncoder, downsample_mask
from models.text_encoder import TextEncoder
from models.towers import RadarTower, TextTower
from tests.radar_tiny import tiny_args, tiny_cfg
from tests.tiny_towers import save_tiny_clip, save_tiny_vit
from training.checkpoint import load_checkpoint
from training.io import atomic_save
from training.optim import param_groups


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One simulated data folder (built by the first run) and the tiny towers
    (8 px patches: 224 frames -> 28 patch columns)."""
    tmp = tmp_path_factory.mktemp("radar_towers")
    save_tiny_vit(tmp / "vit")
    save_tiny_clip(tmp / "clip")
    fam.prepare_data(tiny_cfg(tmp / "data"))
    return {"tmp": tmp, "data": str(tmp / "data"), "vit": str(tmp / "vit"), "clip": str(tmp / "clip")}


def _run(folders, name, *extra):
    logs = folders["tmp"] / "logs"
    train_stage1.main(tiny_args(folders["data"], logs) + ["--name", name, *extra])
    return str(logs / name / "checkpoints" / "latest.pt")


def _fresh_tower(vit, views="all"):
    """The tower as built from the folder before any step (3 -> 1 fold and the
    position embeddings resampled to the maps' grid included)."""
    return RadarTower({"pretrained": vit}, radar_views=views, embed_dim=32, max_sequence_length=224)


def _backbone(state):
    p = "radar_encoder.backbone."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def test_vit_radar_tower_trains_resumes_and_evaluates(folders):
    ckpt = _run(folders, "vit", "--model.radar.pretrained", folders["vit"], "--max-steps", "2")
    first = load_checkpoint(ckpt)
    fresh = _fresh_tower(folders["vit"]).backbone.state_dict()
    moved = _backbone(first["model"])
    assert set(moved) == set(fresh)
    assert moved["embeddings.patch_embeddings.projection.weight"].shape[1] == 1   # folded 3 -> 1
    assert moved["embeddings.position_embeddings"].shape[1] == 1 + 64 * 28        # 512 bins x 224 frames
    assert any(not torch.equal(moved[k], fresh[k]) for k in fresh)                # it trains

    ckpt = _run(folders, "vit", "--model.radar.pretrained", folders["vit"], "--max-steps", "3",
                "--resume", "latest")
    assert load_checkpoint(ckpt)["train_state"]["step"] == 3

    out = folders["tmp"] / "eval_vit"
    eval_script.main(["--checkpoint", ckpt, "--out", str(out)])
    with open(out / "metrics.json") as f:
        m = json.load(f)
    for k in ("t2r_R@1", "r2t_R@1", "temporal_order_acc", "zeroshot_action_acc"):
        assert 0.0 <= m[k] <= 1.0, k
    assert m["t2r_R@10"] == 1.0                 # 6 test clips: every caption's clip in the top 10
    assert (out / "alignment_1.png").exists()   # radar tokens x text tokens on the tower's columns

    # stage 2 on the tower: the stage-1 weights loaded strictly, a linear probe runs
    parts = fam.build_stage2(load_checkpoint(ckpt)["config"], load_checkpoint(ckpt)["model"], "linear")
    assert isinstance(parts["encoder"], RadarTower)
    test = train_stage2.main(["--family", "radar", "--init", ckpt, "--mode", "linear",
                              "--stage2.epochs", "1", "--precision", "fp32", "--workers", "0",
                              "--logs", str(folders["tmp"] / "logs2"), "--name", "s2"])
    assert 0.0 <= test["action_acc"] <= 1.0


def test_frozen_tower_is_bit_identical_and_its_projection_moves(folders):
    """Doppler only (one view): 2 steps, then 1 more after --resume; the
    backbone is the folder's (after the fold) in both checkpoints."""
    args = ["--model.radar.pretrained", folders["vit"], "--model.radar.freeze", "true",
            "--data.radar_views", "doppler"]
    one = load_checkpoint(_run(folders, "frozen", *args, "--max-steps", "2"))["model"]
    two = load_checkpoint(_run(folders, "frozen", *args, "--max-steps", "3", "--resume", "latest"))["model"]
    fresh = _fresh_tower(folders["vit"], "doppler").backbone.state_dict()
    for state in (one, two):
        tower = _backbone(state)
        assert set(tower) == set(fresh)
        assert all(torch.equal(tower[k], fresh[k]) for k in fresh)
    assert tower["embeddings.position_embeddings"].shape[1] == 1 + 16 * 28      # 128 bins x 224 frames
    assert not torch.equal(one["radar_encoder.proj.weight"], two["radar_encoder.proj.weight"])

    cfg = tiny_cfg(folders["data"], *args)
    model = fam.build_model(cfg).train()
    assert model.radar_encoder.frozen and not model.radar_encoder.backbone.training   # eval mode


@pytest.mark.parametrize("tower, views, rows", [("vit", "all", 64), ("vit", "doppler", 16),
                                                ("clip", "azimuth", 16)])
def test_tower_output_contract_matches_the_radar_encoder(folders, tower, views, rows):
    """The same RadarOutput as RadarEncoder's: [B, T', D] with one token per
    patch column (8 frames), the token mask downsampled from the frame mask,
    padded tokens zero; a batch with the other views too is fine. A full
    CLIP folder gives its vision tower."""
    cfg = tiny_cfg(folders["data"], "--model.radar.pretrained", folders[tower],
                   "--data.radar_views", views)
    model = fam.build_model(cfg).eval()
    assert type(model.radar_encoder.backbone).__name__ == {"vit": "ViTModel",
                                                           "clip": "CLIPVisionModel"}[tower]
    assert model.radar_encoder.grid == (rows, 28)
    ds = fam.build_datasets(cfg)["val"]
    batch = fam.collate([ds[i] for i in range(len(ds))])
    batch["radar_mask"][0, 100:] = False                           # a short clip: 13 valid columns
    with torch.no_grad():
        out = model.encode_radar(model.radar_views(batch), batch["radar_mask"])
    B = len(ds)
    assert out["radar_features"].shape == (B, 32) and out["radar_seq"].shape == (B, 28, 32)
    assert torch.equal(out["radar_mask"], downsample_mask(batch["radar_mask"], 8))
    assert int(out["radar_mask"][0].sum()) == 13
    assert torch.all(out["radar_seq"][0, 13:] == 0)
    # padded frames do not reach the valid tokens (masked in attention, zeroed in the input)
    noisy = {v: x.clone() for v, x in model.radar_views(batch).items()}
    for x in noisy.values():
        x[0, :, 100:] = torch.randn_like(x[0, :, 100:])
    with torch.no_grad():
        again = model.encode_radar(noisy, batch["radar_mask"])
    torch.testing.assert_close(again["radar_seq"][0], out["radar_seq"][0])
    torch.testing.assert_close(again["radar_features"][0], out["radar_features"][0])


def test_clip_text_tower_through_the_radar_path(folders):
    """--model.text.pretrained CLIP_DIR: CLIP's text tower; its special tokens
    (<|startoftext|>, <|endoftext|>, padding) are out of the temporal
    similarity's content-token mask and every other token is in it, each
    pointing at its characters of the caption; the disk cache is skipped."""
    ckpt = _run(folders, "cliptext", "--model.text.pretrained", folders["clip"],
                "--model.text.disk_cache", "true", "--model.text.pooling_strategy", "pooler",
                "--max-steps", "2")
    state = load_checkpoint(ckpt)["model"]
    assert "text_encoder.backbone.embeddings.token_embedding.weight" in state
    cfg = load_checkpoint(ckpt)["config"]
    assert not os.path.exists(text_cache_path(fam.cache_dir(cfg), cfg["model"]["text"]))
    model = fam.build_model(cfg).eval()
    text = model.text_encoder
    assert isinstance(text, TextTower) and text.max_length == 64    # the checkpoint's positions
    caps = ["the person walks and then jumps", "sit"]
    with torch.no_grad():
        out = model.encode_text(caps)
        raw = text(caps)
    tok = text.tokenizer
    special = torch.isin(raw.input_ids, torch.tensor([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]))
    assert torch.equal(out["text_mask"], raw.mask & ~special)
    assert torch.equal(out["text_mask"], content_token_mask(raw.mask, raw.offsets))
    for i, c in enumerate(caps):
        spans = raw.offsets[i][out["text_mask"][i]].tolist()
        assert "".join(c[a:b] for a, b in spans) == c.replace(" ", "")
    assert out["text_tokens"].shape[-1] == 32


def test_checkpoint_with_the_keys_from_before_the_tower_sections(folders):
    """A checkpoint saved before issue 11 (model.text.model_name /
    freeze_backbone, no model.radar) of a run that trained its MiniLM:
    eval.py and --resume build today's RadarEncoder and a trainable MiniLM.
    On --resume the config also holds the current defaults of the new keys
    (freeze: true); the checkpoint's freeze_backbone: false must win."""
    ckpt = _run(folders, "old", "--max-steps", "1", "--model.text.freeze", "false")
    saved = load_checkpoint(ckpt)
    m = saved["config"]["model"]
    m.pop("radar")
    t = m["text"]
    t["model_name"], t["freeze_backbone"] = t.pop("pretrained"), t.pop("freeze")
    t.pop("layer_decay"), t.pop("lr_mult")
    for path in glob.glob(os.path.join(os.path.dirname(ckpt), "*.pt")):   # latest.pt and step_*.pt
        atomic_save(saved, path)
    model = fam.build_model(saved["config"])
    assert isinstance(model.radar_encoder, RadarEncoder)
    assert isinstance(model.text_encoder, TextEncoder) and not model.text_encoder.frozen
    model.load_state_dict(saved["model"])

    out = folders["tmp"] / "eval_old"
    eval_script.main(["--checkpoint", ckpt, "--out", str(out)])
    assert (out / "metrics.json").exists()
    resumed = load_checkpoint(_run(folders, "old", "--max-steps", "2", "--resume", "latest"))
    assert resumed["train_state"]["step"] == 2
    assert resumed["config"]["model"]["text"]["freeze_backbone"] is False   # the checkpoint's keys kept
    key = "text_encoder.backbone.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(resumed["model"][key], saved["model"][key])     # the MiniLM still trains


def test_tower_keys_without_a_pretrained_radar_tower(folders, tmp_path):
    cfg = tiny_cfg(folders["data"], "--model.radar.layer_decay", "0.5")
    with pytest.raises(ValueError, match=r"model.radar.layer_decay=0.5 needs model.radar.pretrained"):
        fam.build_model(cfg)
    model = fam.build_model(tiny_cfg(folders["data"], "--model.radar.freeze", "true")).train()
    assert not any(p.requires_grad for p in model.radar_encoder.parameters())
    assert not model.radar_encoder.training                        # no dropout in a frozen encoder
    with pytest.raises(ValueError, match=r"model.radar.pretrained: .*'clip_text_model'.*expected one of"):
        text_only = tmp_path / "text_only"
        TextTower({"pretrained": folders["clip"]}).backbone.save_pretrained(str(text_only))
        fam.build_model(tiny_cfg(folders["data"], "--model.radar.pretrained", str(text_only)))
    with pytest.raises(ValueError, match=r"max_sequence_length = 220 is not a multiple of .* 8"):
        fam.build_model(tiny_cfg(folders["data"], "--model.radar.pretrained", folders["vit"],
                                 "--data.max_motion_length", "220"))


def test_layer_decay_and_lr_mult_reach_the_radar_towers_groups(folders):
    """--model.radar.layer_decay 0.5 --model.radar.lr_mult 0.1 (tiny ViT, L = 2
    blocks): embeddings at 0.1 x 0.5^3, block i at 0.1 x 0.5^(3 - i), the final
    norm / pooler at 0.1, the new projection at 1; the text tower keeps
    lr_multipliers' 0.5."""
    cfg = tiny_cfg(folders["data"], "--model.radar.pretrained", folders["vit"],
                   "--model.radar.layer_decay", "0.5", "--model.radar.lr_mult", "0.1",
                   "--data.radar_views", "doppler")
    model = fam.build_model(cfg)
    lr = {n: g["lr_mult"] for g in param_groups({"model": model}, cfg) for n in g["names"]}
    r = "model.radar_encoder."
    expect = {"backbone.embeddings.patch_embeddings.projection.weight": 0.1 * 0.5 ** 3,
              "backbone.embeddings.position_embeddings": 0.1 * 0.5 ** 3,
              "backbone.layers.0.attention.q_proj.weight": 0.1 * 0.5 ** 2,
              "backbone.layers.1.mlp.fc2.weight": 0.1 * 0.5,
              "backbone.layernorm.weight": 0.1, "backbone.pooler.dense.weight": 0.1,
              "proj.weight": 1.0}
    for name, mult in expect.items():
        assert lr[r + name] == pytest.approx(mult), name
    assert lr["model.text_encoder.proj.weight"] == 0.5


def test_grad_checkpointing_keeps_the_towers_loss_and_gradients(folders):
    cfg = tiny_cfg(folders["data"], "--model.radar.pretrained", folders["vit"],
                   "--data.radar_views", "doppler", "--model.text.freeze", "false")
    ds = fam.build_datasets(cfg)["train"]
    batch = fam.collate([ds[i] for i in range(4)])
    crit = fam.build_criterion(cfg)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = fam.build_model(cfg).train()
        model.set_grad_checkpointing(ckpt)
        calls, mlp = [], model.radar_encoder.backbone.layers[0].mlp
        run = mlp.forward   # wrapped, not hooked: the recomputation in backward skips module hooks
        mlp.forward = lambda *a, **k: (calls.append(1), run(*a, **k))[1]
        torch.manual_seed(1)
        loss, _ = crit(model(batch), batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None}, len(calls)))
    (l0, g0, c0), (l1, g1, c1) = results
    assert c1 == 2 * c0                     # each block run again in backward: checkpointed
    assert torch.equal(l0, l1) and set(g0) == set(g1)
    assert any(n.startswith("radar_encoder.backbone.layers.") for n in g0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], msg=n)
