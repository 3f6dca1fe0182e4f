"""Radar CLIP model: similarity types, masks, per-sample outputs, criterion."""
import itertools

import pytest
import torch

from losses.radar_loss import RadarContrastiveLoss, multi_positive_ce
from models.radar.clip_model import CLIPModel, perturb_time, reverse_valid
from models.radar.encoder import RadarEncoder
from models.radar.sequence_similarity import TYPES, SequenceSimilarity, monotonic_alignment
from models.text_encoder import TextEncoder

D = 16


def basis(n, dim=D, seed=0):
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))
    return q[:n]  # [n, D] orthonormal rows


def sequences(parts, frames):
    """One sequence per row of `parts` (lists of basis indices), each part
    held for `frames` tokens, plus a little noise: [B, len*frames, D]."""
    e = basis(8)
    g = torch.Generator().manual_seed(1)
    x = torch.stack([torch.cat([e[i].expand(frames, D) for i in p]) for p in parts])
    return x + 0.05 * torch.randn(x.shape, generator=g)


def full_mask(x):
    return torch.ones(x.shape[:2], dtype=torch.bool)


@pytest.mark.parametrize("kind", TYPES)
def test_every_type_ranks_matched_pair_first_and_passes_gradients(kind):
    radar = sequences([[0, 1], [2, 3]], 8).requires_grad_()   # [2, 16, D]
    text = sequences([[0, 1], [2, 3]], 2).requires_grad_()    # [2, 4, D]
    sim = SequenceSimilarity(D, kind, window_size=2, temperature=0.1)
    S = sim(radar, full_mask(radar), text, full_mask(text))   # [2, 2]
    assert S.shape == (2, 2)
    assert S[0, 0] > S[0, 1] and S[1, 1] > S[1, 0]
    assert S[0, 0] > S[1, 0] and S[1, 1] > S[0, 1]
    # paired scores are the diagonal of the all-pairs matrix
    torch.testing.assert_close(sim.paired(radar, full_mask(radar), text, full_mask(text)),
                               S.diagonal(), atol=1e-5, rtol=1e-5)
    loss = torch.nn.functional.cross_entropy(S / 0.1, torch.arange(2))
    loss.backward()
    for name, g in (("radar", radar.grad), ("text", text.grad)):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_temporal_ranks_order_swapped_caption_below_matched_global_cannot():
    radar = sequences([[0, 1]], 8)             # walk, then jump
    texts = sequences([[0, 1], [1, 0]], 2)     # true order, swapped order
    rm, tm = full_mask(radar), full_mask(texts)
    temporal = SequenceSimilarity(D, "temporal")(radar, rm, texts, tm)[0]  # [2]
    assert temporal[0] - temporal[1] > 0.3
    glob = SequenceSimilarity(D, "global")(radar, rm, texts, tm)[0]
    assert abs(glob[0] - glob[1]) < 0.02      # same bag of tokens: the global score cannot tell


def test_monotonic_alignment_equals_brute_force():
    g = torch.Generator().manual_seed(3)
    sim = torch.randn(5, 3, generator=g)  # [Tr, Lt]
    best = max(sum(sim[t, k] for k, t in enumerate(path))
               for path in itertools.product(range(5), repeat=3) if list(path) == sorted(path))
    got = monotonic_alignment(sim, torch.ones(5, dtype=torch.bool), torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(got, best / 3)


@pytest.mark.parametrize("kind", TYPES)
def test_similarity_ignores_padding(kind):
    radar, text = sequences([[0, 1], [2, 3]], 8), sequences([[0, 1], [2, 3]], 3)
    rm, tm = full_mask(radar), full_mask(text)
    rm[0, 11:] = False
    tm[1, 4:] = False
    sim = SequenceSimilarity(D, kind, window_size=2)
    torch.nn.init.normal_(sim.fuse.weight, std=0.1)  # hierarchical context on
    S = sim(radar, rm, text, tm)
    radar2, text2 = radar.clone(), text.clone()
    radar2[0, 11:] = 100.0
    text2[1, 4:] = -50.0
    torch.testing.assert_close(sim(radar2, rm, text2, tm), S)


def make_encoder(pooling, **kw):
    torch.manual_seed(0)
    return RadarEncoder(embed_dim=32, num_layers=1, num_heads=2, downsample=8,
                        max_sequence_length=64, pooling=pooling, use_positional_encoding=True,
                        dropout=0.0, **kw).eval()


def radar_batch(B=3, T=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {v: torch.randn(B, c, T, generator=g) for v, c in
         (("range_time", 256), ("doppler_time", 128), ("azimuth_time", 128))}
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 40:] = False
    mask[1, 20:] = False
    return x, mask


@pytest.mark.parametrize("pooling", ["eot", "mean", "attention"])
def test_pooling_respects_mask(pooling):
    enc = make_encoder(pooling)
    x, mask = radar_batch()
    with torch.no_grad():
        out = enc(x, mask)
        x2 = {v: t.clone() for v, t in x.items()}
        for t in x2.values():
            t[~mask.unsqueeze(1).expand_as(t)] = 7.0   # garbage in the padding only
        out2 = enc(x2, mask)
    assert out.mask[1].sum() == 3  # 20 valid frames -> 3 tokens of 8 (the last one partial)
    torch.testing.assert_close(out2.features, out.features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out2.sequence, out.sequence, atol=1e-5, rtol=1e-5)
    assert (out.sequence[~out.mask] == 0).all()


def test_radar_outputs_are_per_sample():
    enc = make_encoder("attention")
    x, mask = radar_batch()
    with torch.no_grad():
        a = enc(x, mask)
        x2 = {v: t.clone() for v, t in x.items()}
        for t in x2.values():
            t[2] = torch.randn_like(t[2])
        mask2 = mask.clone()
        mask2[2, 8:] = False
        b = enc(x2, mask2)
    torch.testing.assert_close(b.features[:2], a.features[:2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(b.features[2], a.features[2])


def test_clip_model_is_per_sample_with_text_tower():
    torch.manual_seed(0)
    model = CLIPModel(make_encoder("eot"), TextEncoder(embed_dim=32)).eval()
    x, mask = radar_batch()
    batch = dict(x, radar_mask=mask, caption=["a person walks", "someone jumps twice",
                                              "a man waves, then sits down"])
    with torch.no_grad():
        a = model(batch)
        batch2 = dict(batch, caption=batch["caption"][:2] + ["a woman kicks with the left leg"])
        batch2["range_time"] = batch["range_time"].clone()
        batch2["range_time"][2] += 1.0
        b = model(batch2)
    for k in ("radar_features", "radar_seq", "text_features"):
        torch.testing.assert_close(b[k][:2], a[k][:2], atol=1e-5, rtol=1e-5)
    L = min(a["text_tokens"].shape[1], b["text_tokens"].shape[1])
    torch.testing.assert_close(b["text_tokens"][:2, :L], a["text_tokens"][:2, :L], atol=1e-5, rtol=1e-5)
    # special tokens are out of the alignment mask
    assert not a["text_mask"][:, 0].any()


def test_reverse_and_perturb_keep_views_aligned():
    x = torch.arange(10.0).expand(2, 3, 10).clone()
    mask = torch.tensor([[True] * 6 + [False] * 4, [True] * 10])
    r = reverse_valid(x, mask)
    assert r[0, 0].tolist() == [5, 4, 3, 2, 1, 0, 6, 7, 8, 9]
    torch.testing.assert_close(reverse_valid(r, mask), x)
    y, m = perturb_time(x, mask, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(y[0], x[0] * mask[0])       # factor 1, no shift: unchanged
    assert m[1].sum() == 5 and y[1, 0, :5].tolist() == [0, 2, 4, 6, 8]


def test_multi_positive_ce_treats_duplicate_captions_as_positives():
    # Items 0 and 1 share a caption: the loss must not push their cross logit down.
    def grad_01(ids):
        logits = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [0.0, 0.0, 5.0]], requires_grad=True)
        multi_positive_ce(logits, torch.tensor(ids)).backward()
        return logits.grad[0, 1].item()
    assert abs(grad_01([0, 0, 1])) < 0.01
    assert grad_01([0, 1, 2]) > 0.1


@pytest.mark.parametrize("siglip", [False, True])
def test_criterion_hard_negatives_and_parameters(siglip):
    torch.manual_seed(0)
    crit = RadarContrastiveLoss(D, use_siglip=siglip, use_sequence_similarity=True,
                                sequence_similarity_type="temporal", temporal_negative_weight=1.0,
                                consistency_weight=0.5)
    names = {n for n, _ in crit.named_parameters()}
    assert "logit_scale" in names and ("logit_bias" in names) == siglip
    radar = sequences([[0, 1], [2, 3], [4, 5]], 4).requires_grad_()
    text = sequences([[0, 1], [2, 3], [4, 5]], 2).requires_grad_()
    f = {"radar_features": radar.mean(1), "radar_seq": radar, "radar_mask": full_mask(radar),
         "text_features": text.mean(1), "text_tokens": text, "text_mask": full_mask(text),
         "swap_features": text.flip(1).mean(1), "swap_tokens": text.flip(1),
         "swap_mask": full_mask(text), "rev_features": radar.flip(1).mean(1),
         "rev_seq": radar.flip(1), "rev_mask": full_mask(radar), "aug_features": radar.mean(1) + 0.1}
    batch = {"caption": ["a", "b", "c"], "has_swap": torch.tensor([True, True, False])}
    loss, logs = crit(f, batch, 0)
    assert {"loss_clip", "loss_seq", "loss_temporal_neg", "loss_consistency"} <= set(logs)
    loss.backward()
    assert radar.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
    assert crit.logit_scale.grad is not None


def _alignment_before(sim, rmask, tmask):
    """monotonic_alignment as it was before issue 12's cheaper masking: both
    masks filled into full-size copies of ``sim``."""
    sim = sim.float().masked_fill(~tmask.unsqueeze(-2), 0.0)
    sim = sim.masked_fill(~rmask.unsqueeze(-1), -1e4)
    V = torch.zeros_like(sim[..., 0])
    for s_k in sim.unbind(-1):
        V = s_k + torch.cummax(V, dim=-1).values
    score = V.masked_fill(~rmask, -1e4).max(-1).values
    return score / tmask.sum(-1).clamp_min(1).to(score.dtype)


@pytest.mark.parametrize("radar_gaps", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_monotonic_alignment_masks_as_before(radar_gaps, dtype):
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(4, 3, 12, 7, generator=g).to(dtype).requires_grad_(True)   # [Nr, Nt, Tr, Lt]
    rmask = torch.ones(4, 3, 12, dtype=torch.bool)
    rmask[0, :, 5:] = False                 # padding after the clip, as every loader makes
    rmask[2, :, 9:] = False
    if radar_gaps:
        rmask[1, :, 3:6] = False            # a gap between valid frames
    tmask = torch.ones(4, 3, 7, dtype=torch.bool)
    tmask[:, 1, 4:] = False
    tmask[:, 2, 6:] = False
    got = monotonic_alignment(sim, rmask, tmask)
    want = _alignment_before(sim, rmask, tmask)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    g1, = torch.autograd.grad(got.sum(), sim)
    g2, = torch.autograd.grad(want.sum(), sim)
    torch.testing.assert_close(g1, g2, atol=0, rtol=0)
