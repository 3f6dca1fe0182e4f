"""--accum-freq K gives the gradients of the whole effective batch."""
import contextlib

import pytest
import torch

from tests import tiny_family as fam
from training.accumulation import ModelAndLoss, forward_backward
from training.data import cat_batches


def _setup(tiny_cfg, siglip, dropout):
    tiny_cfg["loss"]["use_siglip"] = siglip
    tiny_cfg["model"]["dropout"] = dropout
    torch.manual_seed(0)
    module = ModelAndLoss(fam.build_model(tiny_cfg), fam.build_criterion(tiny_cfg, 0, 1))
    module.train()
    ds = fam.build_datasets(tiny_cfg)["train"]
    batch = fam.collate([ds[i] for i in range(32)])
    batch["id"][5] = batch["id"][9]  # a duplicate caption: multi-positive targets
    return module, batch


class _NoScaler:
    def scale(self, x):
        return x


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _accumulated(module, batch, k):
    micro = [{key: v[i * 32 // k:(i + 1) * 32 // k] for key, v in batch.items()} for i in range(k)]
    module.zero_grad()
    torch.manual_seed(7)
    loss, _ = forward_backward(module, module, micro, 0, contextlib.nullcontext, _NoScaler(),
                               torch.device("cpu"))
    return loss, _grads(module)


@pytest.mark.parametrize("siglip", [False, True])
def test_accum4_equals_batch32_with_dropout(tiny_cfg, siglip):
    module, batch = _setup(tiny_cfg, siglip, dropout=0.3)
    # Reference: one autograd graph over the whole batch of 32. The model is
    # per-sample, so encoding it in the same four chunks from the same RNG
    # state draws the same dropout masks as the accumulated run.
    module.zero_grad()
    torch.manual_seed(7)
    chunks = [{key: v[i * 8:(i + 1) * 8] for key, v in batch.items()} for i in range(4)]
    feats = cat_batches([module.model(c) for c in chunks])
    ref_loss, _ = module.criterion(feats, batch, 0)
    ref_loss.backward()
    ref = _grads(module)

    loss, got = _accumulated(module, batch, 4)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert set(got) == set(ref)
    assert "criterion.logit_scale" in got and (not siglip or "criterion.logit_bias" in got)
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-6, rtol=1e-5), name


def test_accum4_equals_single_forward_of_32_without_dropout(tiny_cfg):
    module, batch = _setup(tiny_cfg, False, dropout=0.0)
    module.zero_grad()
    ref_loss, _ = module(batch)
    ref_loss.backward()
    ref = _grads(module)
    loss, got = _accumulated(module, batch, 4)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-6, rtol=1e-5), name


def test_naive_accumulation_would_differ(tiny_cfg):
    """Guard that the test above can fail: summing micro-batch losses (the
    usual accumulation) gives other gradients, and counting the logit scale
    K times is visible."""
    module, batch = _setup(tiny_cfg, False, dropout=0.0)
    module.zero_grad()
    ref_loss, _ = module(batch)
    ref_loss.backward()
    ref = _grads(module)
    module.zero_grad()
    for i in range(4):
        loss, _ = module({k: v[i * 8:(i + 1) * 8] for k, v in batch.items()})
        (loss / 4).backward()
    naive = _grads(module)
    assert not torch.allclose(naive["model.a.0.weight"], ref["model.a.0.weight"], atol=1e-4)


def test_reseeded_micro_batches_draw_the_masks_of_their_slice(tiny_cfg):
    """With ``reseed`` (what the loop passes) micro-batch j draws its dropout
    masks from seed_micro_batch(seed, position, j), whatever came before: the
    reference encodes each chunk after the same reseed."""
    from training.state import seed_micro_batch
    module, batch = _setup(tiny_cfg, False, dropout=0.3)
    chunks = [{key: v[i * 16:(i + 1) * 16] for key, v in batch.items()} for i in range(2)]
    module.zero_grad()
    feats = []
    for j, c in enumerate(chunks):
        seed_micro_batch(0, 5, j)
        feats.append(module.model(c))
    ref_loss, _ = module.criterion(cat_batches(feats), batch, 0)
    ref_loss.backward()
    ref = _grads(module)
    module.zero_grad()
    torch.manual_seed(123)  # the stream before the step does not matter
    loss, _ = forward_backward(module, module, chunks, 0, contextlib.nullcontext, _NoScaler(),
                               torch.device("cpu"), reseed=lambda j: seed_micro_batch(0, 5, j))
    got = _grads(module)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-6, rtol=1e-5), name
