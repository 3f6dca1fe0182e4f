"""Single-process tests of ClipLoss, SigLipLoss and the retrieval metrics."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import ClipLoss, SigLipLoss
from training.metrics import retrieval_from_scores, retrieval_metrics


def _features(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, generator=g, dtype=torch.float64)
    return a.requires_grad_(), b.requires_grad_()


def _clip_reference(a, b, s):
    # Written out row by row: -log softmax of the diagonal, both directions.
    n, total = a.shape[0], 0.0
    for i in range(n):
        la = torch.stack([s * a[i] @ b[j] for j in range(n)])
        lb = torch.stack([s * b[i] @ a[j] for j in range(n)])
        total = total - (la[i] - torch.logsumexp(la, 0)) - (lb[i] - torch.logsumexp(lb, 0))
    return total / (2 * n)


def test_clip_loss_equals_reference_formula_and_gradients():
    a, b = _features(7, 5, 0)
    s = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    na, nb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    loss = ClipLoss()(na, nb, s)
    grads = torch.autograd.grad(loss, (a, b, s), retain_graph=True)
    ref = _clip_reference(na, nb, s)
    ref_grads = torch.autograd.grad(ref, (a, b, s))
    assert torch.allclose(loss, ref, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-12)


def test_multi_positive_with_unique_ids_equals_plain_loss():
    a, b = _features(9, 4, 1)
    s = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    na, nb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    ids = torch.randperm(9) * 3 + 100  # distinct, not 0..n-1
    plain = ClipLoss()(na, nb, s)
    multi = ClipLoss()(na, nb, s, ids=ids)
    assert torch.allclose(plain, multi, atol=1e-12)
    grads = torch.autograd.grad(multi, (a, b, s), retain_graph=True)
    for g, r in zip(grads, torch.autograd.grad(plain, (a, b, s))):
        assert torch.allclose(g, r, atol=1e-12)


def test_multi_positive_constructed_example():
    # a = b = one-hot e0, e1, e2, scale 1: logits = identity. Items 0 and 1
    # share a caption id, so rows 0 and 1 have targets (1/2, 1/2, 0):
    #   rows 0, 1: -(1/2 log(e/(e+2)) + 1/2 log(1/(e+2))) = log(e+2) - 1/2
    #   row 2:     -log(e/(e+2))                          = log(e+2) - 1
    # same in both directions (symmetric logits), so the mean is
    # log(e+2) - 2/3, against log(e+2) - 1 for the plain loss.
    x = torch.eye(3, dtype=torch.float64)
    one = torch.tensor(1.0, dtype=torch.float64)
    loss = ClipLoss()(x, x, one, ids=torch.tensor([5, 5, 7]))
    assert loss.item() == pytest.approx(math.log(math.e + 2) - 2 / 3, abs=1e-12)
    assert ClipLoss()(x, x, one).item() == pytest.approx(math.log(math.e + 2) - 1, abs=1e-12)


def test_multi_positive_targets_written_out():
    # Random (asymmetric) logits, items 0, 1 and 3 share an id: the targets
    # of both directions are the explicit matrix below.
    a, b = _features(4, 6, 2)
    na, nb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    s = torch.tensor(5.0, dtype=torch.float64)
    t = 1 / 3
    targets = torch.tensor([[t, t, 0, t], [t, t, 0, t], [0, 0, 1, 0], [t, t, 0, t]],
                           dtype=torch.float64)
    logits = s * na @ nb.T
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    loss = ClipLoss()(na, nb, s, ids=torch.tensor([4, 4, 2, 4]))
    assert torch.allclose(loss, expected, atol=1e-12)
    assert not torch.allclose(loss, ClipLoss()(na, nb, s), atol=1e-3)


def test_siglip_loss_equals_formula_and_gradients():
    a, b = _features(6, 5, 3)
    s = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    na, nb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    loss = SigLipLoss()(na, nb, s, bias)
    ref = 0.0
    for i in range(6):
        for j in range(6):
            z = 1.0 if i == j else -1.0
            ref = ref + torch.log1p(torch.exp(-z * (s * na[i] @ nb[j] + bias)))
    ref = ref / 6
    assert torch.allclose(loss, ref, atol=1e-12)
    grads = torch.autograd.grad(loss, (a, b, s, bias), retain_graph=True)
    for g, r in zip(grads, torch.autograd.grad(ref, (a, b, s, bias))):
        assert torch.allclose(g, r, atol=1e-12)


def test_local_loss_without_gather_with_grad_is_refused():
    with pytest.raises(ValueError, match="wrong gradients"):
        ClipLoss(local_loss=True, gather_with_grad=False, rank=0, world_size=2)
    ClipLoss(local_loss=True, gather_with_grad=True, rank=0, world_size=2)  # supported


def test_mismatched_inputs_raise():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="features_b"):
        ClipLoss()(x, x[:3], torch.tensor(1.0))
    with pytest.raises(ValueError, match="ids"):
        ClipLoss()(x, x, torch.tensor(1.0), ids=torch.arange(3))
    with pytest.raises(ValueError, match="features_b"):
        SigLipLoss()(x, x[:3], torch.tensor(1.0), torch.tensor(0.0))


# ---------------------------------------------------------------- metrics

def test_metrics_constructed_example_with_several_captions():
    # Items i0..i3 (i3 has no caption: a distractor). Captions t0, t1 -> i0;
    # t2 -> i1; t3, t4, t5 -> i2. Ranks worked out by hand below.
    scores = torch.tensor([
        [0.9, 0.1, 0.2, 0.3],   # t0: i0 first                      -> rank 1
        [0.5, 0.8, 0.1, 0.6],   # t1: i1, i3 above i0               -> rank 3
        [0.2, 0.4, 0.4, 0.0],   # t2: tie with i2, pessimistic      -> rank 2
        [0.1, 0.2, 0.7, 0.3],   # t3                                -> rank 1
        [0.3, 0.9, 0.2, 0.8],   # t4: i0, i1, i3 above              -> rank 4
        [0.6, 0.0, 0.5, 0.1],   # t5: i0 above                      -> rank 2
    ])
    text_to_item = torch.tensor([0, 0, 1, 2, 2, 2])
    m = retrieval_from_scores(scores, text_to_item)
    # text -> item: ranks 1, 3, 2, 1, 4, 2
    assert m["t2i_R@1"] == pytest.approx(2 / 6)
    assert m["t2i_R@5"] == 1.0 and m["t2i_R@10"] == 1.0
    assert m["t2i_mean_rank"] == pytest.approx(13 / 6)
    assert m["t2i_median_rank"] == 2.0
    assert m["t2i_mAP@10"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 + 1 / 4 + 1 / 2) / 6)
    # item -> text, ranks of each item's captions in its column of scores:
    #   i0: t0 1, t1 3 (0.9, 0.6 >= 0.5)        best 1, AP (1/1 + 2/3) / 2
    #   i1: t2 3 (0.8, 0.9 above)               best 3, AP (1/3) / 1
    #   i2: t3 1, t5 2, t4 5 (tie with t0)      best 1, AP (1/1 + 2/2 + 3/5) / 3
    assert m["i2t_R@1"] == pytest.approx(2 / 3)
    assert m["i2t_R@5"] == 1.0
    assert m["i2t_mean_rank"] == pytest.approx(5 / 3)
    assert m["i2t_median_rank"] == 1.0
    ap = [(1 + 2 / 3) / 2, 1 / 3, (1 + 1 + 3 / 5) / 3]
    assert m["i2t_mAP@10"] == pytest.approx(sum(ap) / 3)
    assert m["gallery_size"] == 4 and m["num_queries"] == 6


def _naive_metrics(scores, text_to_item):
    """Reference by sorting, one query at a time (pessimistic ties)."""
    nt, ni = scores.shape
    t2i = []
    for t in range(nt):
        true = scores[t, text_to_item[t]]
        t2i.append(int((scores[t] >= true).sum()))
    i2t_best, i2t_ap = [], []
    for i in range(ni):
        caps = [t for t in range(nt) if text_to_item[t] == i]
        if not caps:
            continue
        col = scores[:, i]
        ranks = sorted(int((col >= col[t]).sum()) for t in caps)
        i2t_best.append(ranks[0])
        i2t_ap.append(sum((k + 1) / r for k, r in enumerate(ranks) if r <= 10) / len(caps))
    t2i, best = torch.tensor(t2i, dtype=torch.float64), torch.tensor(i2t_best, dtype=torch.float64)
    out = {}
    for p, r in (("t2i_", t2i), ("i2t_", best)):
        for k in (1, 5, 10):
            out[f"{p}R@{k}"] = (r <= k).double().mean().item()
        out[f"{p}mean_rank"] = r.mean().item()
        out[f"{p}median_rank"] = float(math.floor(r.median().item() if len(r) % 2 else
                                                  r.sort().values[len(r) // 2 - 1:len(r) // 2 + 1]
                                                  .mean().item()))
    out["t2i_mAP@10"] = torch.where(t2i <= 10, 1 / t2i, 0.0).mean().item()
    out["i2t_mAP@10"] = sum(i2t_ap) / len(i2t_ap)
    return out


def _quantised_embeddings(nt, ni, d, seed):
    # Multiples of 1/4 in few dimensions: dot products are exact in fp32
    # (so any chunking gives bit-identical scores) and ties do occur.
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(-2, 3, (nt, d), generator=g).float() / 4
    item = torch.randint(-2, 3, (ni, d), generator=g).float() / 4
    # Captions near their item so that ranks spread over 1..ni.
    text_to_item = torch.randint(0, ni - 3, (nt,), generator=g)  # last 3: distractors
    text = text + item[text_to_item] * 2
    return text, item, text_to_item


def test_metrics_equal_naive_reference_on_random_gallery():
    text, item, text_to_item = _quantised_embeddings(90, 25, 6, 0)
    scores = text @ item.T
    m = retrieval_metrics(text, item, text_to_item)
    ref = _naive_metrics(scores, text_to_item)
    for k, v in ref.items():
        assert m[k] == pytest.approx(v, abs=1e-12), k
    # The example is not degenerate: ranks beyond 10 and R@1 strictly inside (0, 1).
    assert 0 < m["t2i_R@1"] < 1 and m["t2i_R@10"] < 1 and 0 < m["i2t_R@1"] < 1


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_equals_unchunked(chunk_size):
    text, item, text_to_item = _quantised_embeddings(90, 25, 6, 1)
    full = retrieval_metrics(text, item, text_to_item, chunk_size=10_000)
    assert retrieval_metrics(text, item, text_to_item, chunk_size=chunk_size) == full
    assert retrieval_from_scores(text @ item.T, text_to_item, chunk_size=chunk_size) == full


def test_metrics_reject_bad_text_to_item():
    text, item, text_to_item = _quantised_embeddings(10, 5, 4, 2)
    with pytest.raises(ValueError, match="gallery size"):
        retrieval_metrics(text, item, torch.full((10,), 5))
    with pytest.raises(ValueError, match="LongTensor"):
        retrieval_metrics(text, item, text_to_item.float())
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(text, item, text_to_item[:9])


def test_losses_under_bf16_autocast_stay_fp32_and_close():
    g = torch.Generator().manual_seed(4)
    a = F.normalize(torch.randn(64, 32, generator=g), dim=-1)
    b = F.normalize(torch.randn(64, 32, generator=g), dim=-1)
    s, bias = torch.tensor(10.0), torch.tensor(-10.0)
    fp32 = [ClipLoss()(a, b, s), ClipLoss()(a, b, s, ids=torch.arange(64)),
            SigLipLoss()(a, b, s, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = [ClipLoss()(a, b, s), ClipLoss()(a, b, s, ids=torch.arange(64)),
                SigLipLoss()(a, b, s, bias)]
    for lo, hi in zip(bf16, fp32):
        assert lo.dtype == torch.float32
        assert lo.item() == pytest.approx(hi.item(), rel=1e-2)


def test_metrics_never_score_more_than_a_chunk_at_once():
    # The claim that a 50k gallery never needs the whole Nt x Ni matrix:
    # every block of scores requested holds at most chunk_size x Ni values.
    from training import metrics
    text, item, text_to_item = _quantised_embeddings(300, 40, 6, 3)
    chunk_size, sizes = 16, []

    def rows(t0, t1):
        sizes.append((t1 - t0) * 40)
        return text[t0:t1] @ item.T

    def items(idx):
        sizes.append(len(idx) * 300)
        return item[idx] @ text.T

    m = metrics._metrics(rows, items, 300, 40, text_to_item, chunk_size)
    assert max(sizes) <= chunk_size * 40 < 300 * 40
    assert m == retrieval_from_scores(text @ item.T, text_to_item)


def test_scale_grad_is_identity_forward_and_scales_the_gradient():
    from models.grad import scale_grad
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    assert torch.equal(scale_grad(x, 3.0), x)
    for factor in (3.0, -0.5):  # -0.5: gradient reversal
        x.grad = None
        (scale_grad(x, factor) * w).sum().backward()
        assert torch.allclose(x.grad, factor * w)
