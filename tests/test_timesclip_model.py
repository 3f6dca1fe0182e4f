"""TimesCLIP model: patch counts and shapes, flags, alignment loss values,
the frozen-vision feature cache, and learning to forecast."""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel

from data.timesclip.dataset import collate
from losses.timesclip_loss import TimesCLIPLoss
from models.timesclip.encoders import PatchEmbedding, VisionEncoder, n_patches
from models.text_encoder import resolve_model_path
from models.timesclip.model import TimesCLIP


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = dict(d_model=16, embed_dim=16, n_layers=1, n_heads=2, image_size=16, vision_patch=8,
             vision_width=16, vision_layers=1, dropout=0.0)


@pytest.mark.parametrize("t,pl,s,m", [(18, 6, 3, 6), (36, 6, 3, 12), (18, 8, 4, 4), (18, 6, 6, 4)])
def test_patch_counts_and_shapes(t, pl, s, m):
    assert n_patches(t, pl, s) == m
    pe = PatchEmbedding(pl, s, 8)
    x = torch.randn(2, t, 7)
    assert pe(x).shape == (2, 7, m, 8)
    # The last patch ends on the repeated last value (PatchTST end padding).
    pe.tokenizer = torch.nn.Identity()
    patches = pe(x)                                          # [B, V, M, PL]
    assert torch.equal(patches[0, 3, 0], x[0, :pl, 3])
    assert torch.equal(patches[0, 3, -1, -1], x[0, -1, 3])


def test_patch_embedding_rejects_short_series():
    with pytest.raises(ValueError, match="shorter than patch_length"):
        PatchEmbedding(6, 3, 8)(torch.randn(1, 4, 7))


def test_forward_shapes_and_flags():
    x = {"x": torch.randn(3, 18, 7)}
    out = TimesCLIP(**SMALL)(x)
    assert out["forecast"].shape == (3, 18, 7)
    assert out["vision"].shape == out["language"].shape == (3, 7, 16)
    lang = TimesCLIP(use_vision=False, **SMALL)(x)
    assert set(lang) == {"forecast", "language"}
    vis = TimesCLIP(use_language=False, **SMALL)(x)
    assert set(vis) == {"forecast", "vision"} and vis["forecast"].shape == (3, 18, 7)
    with pytest.raises(ValueError, match="both off"):
        TimesCLIP(use_vision=False, use_language=False)


def test_model_does_not_mix_samples():
    m = TimesCLIP(**SMALL).eval()
    x = torch.randn(4, 18, 7)
    full = m({"x": x})["forecast"]
    one = m({"x": x[2:3]})["forecast"]
    assert torch.allclose(full[2:3], one, atol=1e-5)


def test_alignment_losses_equal_reference():
    torch.manual_seed(0)
    vis, lang = torch.randn(5, 7, 8), torch.randn(5, 7, 8)
    feats = {"forecast": torch.randn(5, 18, 7), "vision": vis, "language": lang}
    batch = {"y": torch.randn(5, 18, 7)}
    s = 1 / 0.07
    a, b = F.normalize(vis.mean(1), dim=-1), F.normalize(lang.mean(1), dim=-1)
    lab = torch.arange(5)
    ref_sample = (F.cross_entropy(s * a @ b.T, lab) + F.cross_entropy(s * b @ a.T, lab)) / 2
    ref_var = 0
    for i in range(5):
        va, lb = F.normalize(vis[i], dim=-1), F.normalize(lang[i], dim=-1)
        ref_var += (F.cross_entropy(s * va @ lb.T, torch.arange(7))
                    + F.cross_entropy(s * lb @ va.T, torch.arange(7))) / 2 / 5
    mse = F.mse_loss(feats["forecast"], batch["y"])
    for level, ref in (("sample", ref_sample), ("variate", ref_var),
                       ("hierarchical", 0.7 * ref_sample + 0.3 * ref_var)):
        loss, logs = TimesCLIPLoss(align_level=level, align_weight=0.1)(feats, batch)
        assert torch.allclose(logs["align"], ref, atol=1e-5), level
        assert torch.allclose(loss, mse + 0.1 * ref, atol=1e-5)
    loss, logs = TimesCLIPLoss(align=False)(feats, batch)
    assert torch.allclose(loss, mse) and "align" not in logs
    with pytest.raises(ValueError, match="align needs both"):
        TimesCLIPLoss()({"forecast": feats["forecast"], "language": lang}, batch)
    with pytest.raises(ValueError, match="align_level"):
        TimesCLIPLoss(align_level="global")


def test_alignment_gradient_reaches_both_views_and_scale():
    m = TimesCLIP(**SMALL)
    crit = TimesCLIPLoss(align_weight=1.0)
    x = torch.randn(4, 18, 7)
    loss, _ = crit(m({"x": x}), {"y": torch.randn(4, 18, 7)})
    loss.backward()
    assert m.vision.body.conv.weight.grad.abs().sum() > 0
    assert m.language.patch.tokenizer.weight.grad.abs().sum() > 0
    assert crit.logit_scale.grad is not None and math.isfinite(crit.logit_scale.grad.item())


def test_frozen_vision_features_are_cached():
    enc = VisionEncoder(d_model=8, image_size=16, patch_size=8, width=16,
                        n_layers=1, n_heads=2, vision={"freeze": True})
    x = torch.randn(3, 18, 7)
    a = enc(x)
    assert len(enc.index) == 3 and a.shape == (3, 7, 8)
    enc.body.conv.weight.data.zero_()                       # a cache hit cannot see this
    assert torch.allclose(enc(x), a)
    assert not any(p.requires_grad for p in enc.body.parameters())
    assert enc.proj.weight.requires_grad


# What would make a CUDA step wait for the device: reading a tensor back.
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")


def _items(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(18, 7, generator=g), "y": torch.randn(18, 7, generator=g), "index": i}
            for i in range(n)]


def test_frozen_vision_cache_lookup_reads_nothing_back_from_the_device(monkeypatch):
    """The cached step names the batch's series on the host (the collate's
    keys) and gathers features on the device: no host read at all."""
    m = TimesCLIP(**dict(SMALL, vision={"freeze": True})).eval()
    batch = collate(_items(4))
    first = m(batch)
    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, lambda *a, _n=name, **k: pytest.fail(f"host read: {_n}"))
    second = m(batch)
    monkeypatch.undo()
    for k in first:
        assert torch.equal(first[k], second[k]), k


def _direct(enc, x):
    """The frozen features computed without the cache, [B, V, D]."""
    b, t, v = x.shape
    with torch.no_grad():
        img = enc.render(x).reshape(b * v, 3, enc.image_size, enc.image_size)
        return enc.proj(enc._encode(img)).view(b, v, -1)


def test_frozen_vision_cache_is_exact_when_full_with_repeats_and_reloaded():
    enc = VisionEncoder(d_model=8, image_size=16, patch_size=8, width=16, n_layers=1, n_heads=2,
                        vision={"freeze": True}, cache_size=3 * 7 + 6)   # 3 rows
    xs = torch.stack([it["x"] for it in _items(5)])               # [5, 18, 7]
    keys = [b"k0", b"k1", b"k2", b"k3", b"k4"]
    with torch.no_grad():
        # rows 0 and 2 repeat one key: encoded once, both rows get its features
        a = enc(xs[[0, 1, 0]], [keys[0], keys[1], keys[0]])
        assert len(enc.index) == 2 and torch.allclose(a, _direct(enc, xs[[0, 1, 0]]), atol=1e-6)
        # two new keys, room for one: the other is computed, not stored
        b = enc(xs[[1, 2, 3]], keys[1:4])
        assert len(enc.index) == 3 and torch.allclose(b, _direct(enc, xs[1:4]), atol=1e-6)
        assert torch.allclose(enc(xs[[3, 2]], [keys[3], keys[2]]), _direct(enc, xs[[3, 2]]), atol=1e-6)
        # new weights invalidate every cached feature
        state = {k: torch.randn_like(v) for k, v in enc.state_dict().items()}
        enc.load_state_dict(state)
        assert not enc.index
        assert torch.allclose(enc(xs[:2], keys[:2]), _direct(enc, xs[:2]), atol=1e-6)
    with pytest.raises(ValueError, match="2 keys for a batch of 3"):
        enc(xs[:3], keys[:2])


def test_short_training_beats_the_mean_forecast():
    # Damped sinusoids whose continuation depends on the input window.
    g = torch.Generator().manual_seed(0)
    t = torch.arange(36).float()
    ph = torch.rand(256, 1, 7, generator=g) * 6.28
    fr = 0.15 + 0.1 * torch.rand(256, 1, 7, generator=g)
    s = torch.sin(fr * t.view(1, 36, 1) + ph)                  # [N, 36, 7]
    torch.manual_seed(0)
    m = TimesCLIP(use_vision=False, **SMALL)
    crit = TimesCLIPLoss(align=False)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for step in range(60):
        i = torch.randint(0, 192, (32,), generator=g)
        loss, _ = crit(m({"x": s[i, :18]}), {"y": s[i, 18:]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        rmse = (m({"x": s[192:, :18]})["forecast"] - s[192:, 18:]).pow(2).mean().sqrt()
    base = (s[192:, 18:] - s[:192, 18:].mean(0)).pow(2).mean().sqrt()
    assert rmse < 0.6 * base


def test_pretrained_backbones_load_from_local_dirs(tmp_path):
    # A local CLIP vision checkpoint behind the chart view and a local BERT
    # body (MiniLM's architecture, tiny and random here, with the bundled
    # MiniLM's tokenizer) behind the new linear tokenizer; the body's weights
    # are the saved ones.
    cfg = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8)
    CLIPVisionModel(cfg).save_pretrained(tmp_path / "clip")
    bert = BertModel(BertConfig(hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=48, vocab_size=30522))
    bert.save_pretrained(tmp_path / "bert")
    AutoTokenizer.from_pretrained(resolve_model_path(None)).save_pretrained(tmp_path / "bert")
    m = TimesCLIP(**dict(SMALL, vision={"pretrained": str(tmp_path / "clip")},
                         language={"pretrained": str(tmp_path / "bert")}))
    out = m({"x": torch.randn(2, 18, 7)})
    assert out["forecast"].shape == (2, 18, 7) and out["vision"].shape == (2, 7, 16)
    w = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(m.language.body.backbone.state_dict()[w], bert.state_dict()[w])
    with pytest.raises(ValueError, match="trained on 16x16 px images; model.image_size is 32: "
                                         "pass --model.image_size 16"):
        TimesCLIP(**dict(SMALL, image_size=32, vision={"pretrained": str(tmp_path / "clip")}))


@pytest.mark.parametrize("key", ["vision", "language"])
def test_tower_keys_a_scratch_body_cannot_honour_are_refused(key):
    with pytest.raises(ValueError, match=f"model.{key}.layer_decay=0.5 needs model.{key}.pretrained"):
        TimesCLIP(**dict(SMALL, **{key: {"layer_decay": 0.5}}))
