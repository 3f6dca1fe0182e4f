"""sCLAP model and losses: gradient reversal, the 3-way loss on a constructed
example, permutation-invariant DOA loss, the loss-weight schedule, and the
per-sample contract of the model."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losses.sclap_loss import SCLAPLoss, doa_loss, loss_weights_at, three_way_loss
from models.sclap.audio import AttentionDOAHead, TemporalAudioEncoder
from models.sclap.model import SCLAP, GradientReversal, ModalityClassifier


@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_gradient_reversal_flips_and_scales(lam):
    x = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(5, 8)
    y = GradientReversal(lam)(x)
    assert torch.equal(y, x)                                        # identity forward
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -lam * w)
    # through the classifier: the input gradient is -lam times the plain one
    torch.manual_seed(0)
    clf = ModalityClassifier(32, lambda_=lam)
    z = torch.randn(4, 32, requires_grad=True)
    F.binary_cross_entropy_with_logits(clf(z), torch.ones(4)).backward()
    z2 = z.detach().clone().requires_grad_(True)
    F.binary_cross_entropy_with_logits(clf.classifier(z2).squeeze(-1), torch.ones(4)).backward()
    torch.testing.assert_close(z.grad, -lam * z2.grad)


def test_three_way_loss_constructed_example():
    s = 10.0
    e = torch.eye(4)
    # item 0: pos text = e0; audios pos = e0, neg_t at 60 deg, neg_s at 90 deg
    c60 = torch.tensor([0.5, math.sqrt(3) / 2, 0, 0])
    audio = torch.stack([torch.stack([e[0], c60, e[2]])])            # [1, 3, 4]
    text = torch.stack([torch.stack([e[0], e[1], e[3]])])            # [1, 3, 4]
    loss = three_way_loss(audio, text, s)
    # t2a: logits s*[1, 0.5, 0]; a2t (pos audio e0 vs texts e0, e1, e3): s*[1, 0, 0]
    t2a = -math.log(math.exp(s) / (math.exp(s) + math.exp(0.5 * s) + 1))
    a2t = -math.log(math.exp(s) / (math.exp(s) + 2))
    assert loss.item() == pytest.approx((t2a + a2t) / 2, rel=1e-5)
    # logits are clamped to +-50: a huge scale saturates instead of overflowing
    swapped = torch.stack([torch.stack([c60, e[0], e[2]])])          # neg_t now matches best
    big = three_way_loss(swapped, text, 1e4, clamp=50.0)
    # t2a logits 1e4*[0.5, 1, 0] -> [50, 50, 0]; a2t 1e4*[0.5, 0.87, 0] -> [50, 50, 0]: CE = ln(2 + e^-50)
    assert big.item() == pytest.approx(math.log(2.0), rel=1e-5)


def test_doa_loss_is_permutation_invariant():
    t = F.normalize(torch.randn(6, 2, 3), dim=-1)
    assert doa_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert doa_loss(t.flip(1), t).item() == pytest.approx(0.0, abs=1e-6)
    p = torch.randn(6, 2, 3)
    assert doa_loss(p, t).item() == pytest.approx(doa_loss(p.flip(1), t).item(), rel=1e-6)
    # unnormalised predictions count by direction only
    assert doa_loss(3 * t.flip(1), t).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_weight_schedule():
    w = [loss_weights_at([1.0, 0.5, 0.2, 0.2], ep) for ep in range(6)]
    assert [x[1] for x in w] == [0.0, 0.0, 0.0, 0.5, 0.5, 0.5]          # semantic from epoch 3
    assert [round(x[2], 6) for x in w] == [0.05, 0.1, 0.15, 0.2, 0.2, 0.2]  # ramp over 4 epochs


def test_criterion_terms_and_total():
    torch.manual_seed(0)
    B, D = 4, 16
    crit = SCLAPLoss([1.0, 0.5, 0.2, 0.2])
    f = {k: torch.randn(B, 3, D) for k in ("audio", "text", "sed", "plain")}
    f["doa"] = torch.randn(B, 3, 2, 3)
    f["mod_audio"], f["mod_text"] = torch.zeros(B, 3), torch.zeros(B, 3)
    batch = {"doa": F.normalize(torch.randn(B, 3, 2, 3), dim=-1),
             "caption_ids": torch.arange(3 * B).view(B, 3), "plain_ids": torch.arange(3 * B).view(B, 3)}
    for epoch in (0, 5):
        loss, logs = crit(f, batch, epoch)
        ws = loss_weights_at([1.0, 0.5, 0.2, 0.2], epoch)
        expect = ((1 - ws[1]) * logs["loss_ss"] + ws[1] * logs["loss_sem"] + ws[0] * logs["loss_doa"]
                  + ws[2] * logs["loss_ts"] + ws[3] * logs["loss_mod"])
        assert loss.item() == pytest.approx(float(expect), rel=1e-5)
    assert logs["loss_mod"].item() == pytest.approx(math.log(2), rel=1e-6)  # chance BCE is ln 2


def test_temporal_encoder_sees_order():
    torch.manual_seed(0)
    enc = TemporalAudioEncoder(8, 32, n_chunks=4).eval()
    fmap = torch.randn(1, 8, 16, 3)
    swapped = torch.cat([fmap[:, :, 8:], fmap[:, :, :8]], dim=2)     # second half first
    a, b = enc(fmap), enc(swapped)
    assert not torch.allclose(a, b, atol=1e-4)
    # a global mean would not tell them apart
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), swapped.mean(dim=(2, 3)))


def test_model_is_per_sample():
    torch.manual_seed(0)
    model = SCLAP(embed_dim=32, channels=(8, 8, 16), temporal_heads=4).eval()
    feats = torch.randn(2, 3, 7, 24, 16)
    caps = ["A dog barks from the left, then a bell rings from the back.",
            "A bell rings from the back, then a dog barks from the left.",
            "A dog barks from the right, then a bell rings from the front.",
            "Rain falls from the front, then someone claps from the right.",
            "Someone claps from the right, then rain falls from the front.",
            "Rain falls from the back, then someone claps from the left."]
    batch = {"feats": feats, "captions": caps, "plain_captions": caps}
    with torch.no_grad():
        both = model(batch)
        one = model({"feats": feats[1:], "captions": caps[3:], "plain_captions": caps[3:]})
    for k in ("audio", "text", "doa", "mod_audio", "mod_text"):
        torch.testing.assert_close(both[k][1:], one[k], atol=1e-5, rtol=1e-4)
    assert both["audio"].shape == (2, 3, 32) and both["doa"].shape == (2, 3, 2, 3)
    assert np.isfinite(both["doa"].numpy()).all()


def test_attention_doa_head_points_where_the_intensity_points():
    """Before any training the attention head is a weighted mean of the
    intensity vectors: if every bin's intensity points to one direction, both
    events get that direction; and the weights follow the bins, so a source
    in the first half and another in the second half are both reachable."""
    torch.manual_seed(0)
    head = AttentionDOAHead(16, n_events=2)
    d = F.normalize(torch.tensor([0.3, -0.8, 0.2]), dim=0)
    feats = torch.randn(3, 7, 24, 16)
    feats[:, 4:7] = d.view(1, 3, 1, 1)
    out = head(torch.randn(3, 16, 12, 2), feats)
    torch.testing.assert_close(F.normalize(out, dim=-1), d.expand(3, 2, 3), atol=1e-5, rtol=0)
    # Make event 0 attend to the first half and event 1 to the second through the time logits.
    d2 = F.normalize(torch.tensor([-0.5, 0.1, 0.7]), dim=0)
    feats[:, 4:7, 12:] = d2.view(1, 3, 1, 1)
    with torch.no_grad():
        last = head.time_logits[-1]
        last.weight.zero_()
        last.bias.zero_()
    fmap = torch.zeros(3, 16, 12, 2)
    step = torch.zeros(12)
    step[6:] = 1.0                                                    # map frames 6.. = input frames 12..
    fmap[:, 0] = step.view(1, 12, 1)
    with torch.no_grad():
        head.time_logits[0].weight.zero_()
        head.time_logits[0].bias.zero_()
        head.time_logits[0].weight[0, 0, 1] = 1.0                    # hidden 0 = the step (GELU(1) > 0)
        last.weight[0, 0, 0], last.weight[1, 0, 0] = -60.0, 60.0
    out = F.normalize(head(fmap, feats), dim=-1)
    assert (out[:, 0] @ d).min() > 0.99 and (out[:, 1] @ d2).min() > 0.99
