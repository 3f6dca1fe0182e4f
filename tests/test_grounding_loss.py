"""GroundingLoss terms against direct computations; hard-negative mining."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses.grounding_loss import GroundingLoss, loss_weights, mine_hard_negatives


def test_hard_negative_mining_never_picks_a_same_image_pair():
    torch.manual_seed(0)
    for trial in range(20):
        N = 12
        ids = torch.randint(0, 5, (N,))                    # several captions per image in one batch
        same = ids[:, None] == ids[None, :]
        sim = torch.randn(N, N) + 5 * same.float()        # same-image pairs are the most similar
        idx, valid = mine_hard_negatives(sim, same, k=4)
        assert not same.gather(1, idx)[valid].any()
        # the picks are the top non-matching ones
        for i in range(N):
            cand = sim[i].masked_fill(same[i], float("-inf"))
            want = cand.topk(4).values
            got = sim[i, idx[i]].masked_fill(~valid[i], float("-inf"))
            torch.testing.assert_close(got, want)
        # rows with fewer than k other images have the tail marked invalid
        n_other = (~same).sum(1)
        assert torch.equal(valid.sum(1), n_other.clamp(max=4))


def _features(N=4, E=2, O=3, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return {"image_features": r(N, D), "text_features": r(N, D), "masked_image_features": r(N, D),
            "entity_features": r(N, E, D), "object_features": r(N, O, D),
            "entity_valid": torch.tensor([[True, True], [True, False], [False, False], [True, True]]),
            "object_valid": torch.tensor([[True, True, True], [True, True, False], [True, True, True],
                                          [True, False, True]])}


def _batch(N=4, E=2, O=3):
    tgt = torch.zeros(N, E, O, dtype=torch.bool)
    tgt[0, 0, 1] = tgt[0, 1, 0] = tgt[1, 0, 0] = tgt[3, 0, 2] = tgt[3, 1, 0] = True
    return {"image_index": torch.tensor([7, 3, 9, 3]), "entity_target": tgt}


def test_coarse_loss_matches_direct_infonce_with_masked_negatives():
    f, b = _features(), _batch()
    crit = GroundingLoss(hard_negatives=False, weight_schedule="constant", loss_weights={"fine": 0.0})
    loss, logs = crit(f, b, 0)
    s = 1 / 0.07
    I, T, M = (F.normalize(f[k], dim=-1) for k in ("image_features", "text_features", "masked_image_features"))
    ids = b["image_index"].tolist()
    total_t2i, total_i2t = 0.0, 0.0
    for i in range(4):
        # text i: positives = images with its id; negatives = other images + masked images
        # of other ids + its own masked image
        cols = [s * T[i] @ I[j] for j in range(4)] + \
               [s * T[i] @ M[j] for j in range(4) if ids[j] != ids[i] or j == i]
        pos = [s * T[i] @ I[j] for j in range(4) if ids[j] == ids[i]]
        total_t2i += torch.logsumexp(torch.stack(cols), 0) - torch.logsumexp(torch.stack(pos), 0)
        rows = [s * I[i] @ T[j] for j in range(4)]
        posr = [s * I[i] @ T[j] for j in range(4) if ids[j] == ids[i]]
        total_i2t += torch.logsumexp(torch.stack(rows), 0) - torch.logsumexp(torch.stack(posr), 0)
    torch.testing.assert_close(loss, (total_t2i + total_i2t) / 8, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cross", [True, False])
def test_fine_loss_matches_direct_infonce(cross):
    f, b = _features(), _batch()
    crit = GroundingLoss(hard_negatives=False, weight_schedule="constant", loss_weights={"coarse": 0.0},
                         fine_cross_sample=cross)
    loss, _ = crit(f, b, 0)
    s = 1 / 0.07
    E_, O_ = (F.normalize(f[k], dim=-1) for k in ("entity_features", "object_features"))
    objs = [(n, o) for n in range(4) for o in range(3) if f["object_valid"][n, o]]
    terms = []
    for n in range(4):
        for e in range(2):
            if not f["entity_valid"][n, e]:
                continue
            cand = [(m, o) for m, o in objs if cross or m == n]
            pos = [(m, o) for m, o in cand if m == n and b["entity_target"][n, e, o]]
            if not pos:
                continue
            lse = lambda c: torch.logsumexp(torch.stack([s * E_[n, e] @ O_[m, o] for m, o in c]), 0)
            terms.append(lse(cand) - lse(pos))
    assert len(terms) == 5
    torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-5, atol=1e-5)


def test_hard_term_and_gradients_reach_all_scales():
    f = {k: v.clone().requires_grad_(v.dtype.is_floating_point) for k, v in _features().items()}
    crit = GroundingLoss(hard_negative_k=2)
    loss, logs = crit(f, _batch(), 0)
    assert math.isfinite(loss.item()) and logs["loss_hard"] > 0
    loss.backward()
    for p in (crit.logit_scale, crit.fine_logit_scale, crit.hard_logit_scale):
        assert p.grad is not None and p.grad.abs() > 0
    assert f["masked_image_features"].grad.abs().sum() > 0


def test_loss_weight_schedule_moves_from_coarse_to_fine():
    w = {"coarse": 1.0, "fine": 2.0}
    assert loss_weights(w, "constant", 5, 10) == (1.0, 2.0)
    early, late = loss_weights(w, "linear", 0, 10), loss_weights(w, "linear", 9, 10)
    assert early == (1.0, 1.0) and late[0] == pytest.approx(0.3) and late[1] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="weight_schedule"):
        loss_weights(w, "cosine", 0, 10)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_hard_logit_scale_gets_a_finite_gradient_when_the_batch_is_not_larger_than_k(n):
    """B <= hard_negative_k: every row has fewer than k other images, so the
    mined tail is padding. Padding once entered as -inf * scale, whose
    gradient with respect to the scale is 0 * -inf = NaN."""
    f = {k: v[:n].clone().requires_grad_(v.dtype.is_floating_point) for k, v in _features().items()}
    b = {"image_index": torch.arange(n), "entity_target": _batch()["entity_target"][:n]}
    crit = GroundingLoss(hard_negative_k=3, weight_schedule="constant",
                         loss_weights={"coarse": 0.0, "fine": 0.0, "hard_negative": 1.0})
    loss, logs = crit(f, b, 0)
    loss.backward()
    g = crit.hard_logit_scale.grad
    assert torch.isfinite(g), g
    # the value against a direct computation: each query against its own pair
    # and the other n - 1 items, padding left out
    s = 1 / 0.07
    I, T = (F.normalize(f[k].detach(), dim=-1) for k in ("image_features", "text_features"))
    direct = (F.cross_entropy(s * T @ I.t(), torch.arange(n)) + F.cross_entropy(s * I @ T.t(), torch.arange(n))) / 2
    torch.testing.assert_close(loss, direct, rtol=1e-5, atol=1e-5)
    if n > 1:
        assert g.abs() > 0
    for k in ("image_features", "text_features"):
        assert torch.isfinite(f[k].grad).all()
