"""unfreeze_last_n on a cached frozen prefix (issue 13): the cache holds the
states entering layer L - n, each step runs only the last n layers; the
outputs and gradients are the full backbone's, only the last n layers (and
the pooler when it is read) get gradients, and the radar disk cache stores
the prefix states in a file of its own."""
import pytest
import torch

from families.radar.text_cache import all_captions
from training.text_cache import build_text_cache, load_text_cache, text_cache_enabled, text_cache_path, unpack
from models.text_encoder import TextEncoder, length_groups
from tests.test_text_head import CAPS, save_tiny_bert

LAYERS = 3


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert3"), layers=LAYERS)


def _pair(bert, n, pooling, **kw):
    """(prefix-cached, uncached) encoders with the same weights."""
    out = []
    for cache in (True, False):
        torch.manual_seed(0)
        out.append(TextEncoder(bert, embed_dim=8, max_length=16, pooling_strategy=pooling,
                               freeze_backbone=True, unfreeze_last_n=n, cache_features=cache, **kw))
    return out


def _grads(enc):
    return {n: p.grad for n, p in enc.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("n", [1, 2, LAYERS])
@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_prefix_cache_equals_the_full_backbone(bert, n, pooling):
    cached, full = _pair(bert, n, pooling)
    assert cached.prefix_layers == LAYERS - n and full.prefix_layers is None
    cached.eval(), full.eval()
    for step in range(2):   # the second call runs from the cache
        a, b = cached(CAPS), full(CAPS)
        assert torch.allclose(a.features, b.features, atol=1e-6), step
        assert torch.allclose(a.tokens[a.mask], b.tokens[b.mask], atol=1e-6), step
    assert len(cached._cache) == len(CAPS)
    # what is cached is the input of layer L - n of the backbone's own forward
    tok = cached.tokenize(CAPS[:1])
    own = cached.backbone(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                          output_hidden_states=True).hidden_states[LAYERS - n][0]
    assert torch.allclose(cached._cache[CAPS[0]][0], own, atol=1e-6)
    (a.features.square().sum() + a.tokens[a.mask].sum()).backward()
    (b.features.square().sum() + b.tokens[b.mask].sum()).backward()
    ga, gb = _grads(cached), _grads(full)
    assert ga.keys() == gb.keys()
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=1e-5), k
    # gradients reach the last n layers (and the pooler it reads) only
    trained = {k.split(".")[3] for k in ga if k.startswith("backbone.encoder.layer.")}
    assert trained == {str(i) for i in range(LAYERS - n, LAYERS)}
    assert any(k.startswith("backbone.pooler.") for k in ga) == (pooling == "pooler")
    assert not any(k.startswith("backbone.embeddings.") for k in ga) and "proj.weight" in ga


@pytest.mark.parametrize("n", [1, LAYERS])
def test_the_frozen_prefix_stays_in_eval_mode_the_last_layers_train(bert, n):
    cached, _ = _pair(bert, n, "mean", head_layers=1, head_heads=2)
    cached.train()
    layers = cached.backbone.encoder.layer
    assert not cached.backbone.embeddings.training   # n = L: the prefix is the embeddings
    assert [m.training for m in layers] == [False] * (LAYERS - n) + [True] * n
    assert cached.head.training
    # the cached states are the eval-mode prefix's, whatever the mode at the first call
    cached(CAPS[:1])
    tok = cached.tokenize(CAPS[:1])
    cached.eval()
    own = cached.backbone(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                          output_hidden_states=True).hidden_states[LAYERS - n][0]
    assert torch.equal(cached._cache[CAPS[0]][0], own)
    cached.train()
    # in training the last layer's dropout runs on the cached states: two calls differ
    a, b = cached(CAPS).features, cached(CAPS).features
    assert not torch.equal(a, b)
    cached.eval()
    assert torch.equal(cached(CAPS).features, cached(CAPS).features)


def test_disk_cache_stores_the_prefix_states_under_its_own_name(tmp_path, bert):
    class Split:   # what all_captions reads of a TemporalNegatives split
        base = type("B", (), {"items": [{"captions": CAPS[:2]}], "action_prompts": {"run": "run"}})()

        def swapped(self, i):
            return ["a person jumps then walks forward"]

    t = {"pretrained": bert, "max_length": 16, "pooling_strategy": "mean", "freeze": True,
         "unfreeze_last_n": 1, "cache_features": True, "disk_cache": True, "cache_max_mb": 512}
    assert text_cache_enabled(t)
    path = text_cache_path(str(tmp_path), t)
    assert path.endswith("_len16_mean_prefix_last1.pt")
    assert text_cache_path(str(tmp_path), dict(t, unfreeze_last_n=0)).endswith("_len16_mean.pt")
    assert text_cache_path(str(tmp_path), dict(t, unfreeze_last_n=2)) != path
    build_text_cache(str(tmp_path), dict(t, head_layers=1, head_heads=2), all_captions({"train": Split()}))
    stored = unpack(torch.load(path))
    assert set(stored) == set(CAPS) | {"a person jumps then walks forward"}
    cached, full = _pair(bert, 1, "mean")
    load_text_cache(cached, str(tmp_path), t)
    assert set(cached._cache) == set(stored)
    cached.eval(), full.eval()
    calls = []
    cached.backbone.register_forward_hook(lambda *a: calls.append(1))
    a, b = cached(CAPS[:2]), full(CAPS[:2])
    assert calls == []                                        # only the last layer ran
    assert torch.allclose(a.features, b.features, atol=2e-3)  # stored as fp16
    # a file for another n is refused by name, not read as the wrong layer's states
    zero = TextEncoder(bert, embed_dim=8, max_length=16, freeze_backbone=True, unfreeze_last_n=2)
    with pytest.raises(ValueError, match="unfreeze_last_n=1.*last 2 layers"):
        load_text_cache(zero, str(tmp_path), t)


def test_grad_checkpointing_on_the_last_layers_gives_the_same_gradients(bert):
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = TextEncoder(bert, embed_dim=8, max_length=16, freeze_backbone=True, unfreeze_last_n=2,
                          grad_checkpointing=ckpt).train()
        assert enc.backbone.encoder.layer[-1].gradient_checkpointing == ckpt
        torch.manual_seed(1)   # the same dropout masks (checkpointing replays the RNG state)
        enc(CAPS).features.square().sum().backward()
        grads.append(_grads(enc))
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6), k


def _padded(groups, lengths):
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def _partitions(values, k):
    """Every split of the sorted list ``values`` into at most k contiguous groups."""
    if k == 1 or len(values) <= 1:
        yield [values]
        return
    yield [values]
    for cut in range(1, len(values)):
        for rest in _partitions(values[cut:], k - 1):
            yield [values[:cut]] + rest


@pytest.mark.parametrize("seed", range(6))
def test_length_groups_are_the_cheapest_split(seed):
    import random
    rng = random.Random(seed)
    lengths = [rng.randint(3, 30) for _ in range(rng.randint(1, 12))]
    for max_groups, cost in ((1, 16), (3, 0), (4, 5)):
        groups = length_groups(lengths, max_groups, cost)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert 1 <= len(groups) <= max_groups
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = min(_padded(p, lengths) + (len(p) - 1) * cost for p in _partitions(order, max_groups))
        assert _padded(groups, lengths) + (len(groups) - 1) * cost == best


def test_length_groups_run_the_same_states_and_gradients(bert):
    # short and long captions: padding all to the longest would waste more than
    # a group's cost, so the trained layers run in groups
    caps = ["run", "sit", "jump up", "a person walks forward then jumps and turns around twice",
            "someone waves, then sits down slowly on the floor and waits", "wave"]
    grouped, single = (_pair(bert, 2, "mean", dropout=0.0)[0] for _ in range(2))   # train mode, no dropout
    single.length_buckets = 1
    lengths = grouped.tokenize(caps)["attention_mask"].sum(1).tolist()
    assert len(length_groups(lengths, grouped.length_buckets)) > 1
    calls = []
    real = grouped._layers
    grouped._layers = lambda h, m: calls.append(h.shape[1]) or real(h, m)
    grouped.train(), single.train()
    a, b = grouped(caps), single(caps)
    assert len(calls) > 1 and max(calls) == max(lengths) and min(calls) < max(lengths)
    assert torch.allclose(a.features, b.features, atol=1e-5)
    assert torch.equal(a.mask, b.mask)
    assert torch.allclose(a.tokens[a.mask], b.tokens[b.mask], atol=1e-5)
    (a.features.square().sum() + a.tokens[a.mask].sum()).backward()
    (b.features.square().sum() + b.tokens[b.mask].sum()).backward()
    ga, gb = _grads(grouped), _grads(single)
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=1e-5), k


@pytest.mark.parametrize("n", [1, 2])
def test_the_prefix_runs_only_the_frozen_layers_and_equals_the_full_forward(bert, n):
    """Filling the cache runs the embeddings and layers 0 .. L-n-1 only (the last
    n layers and the pooler would be thrown away), and its states are the full
    forward's hidden_states[L - n] bit for bit, padded captions included."""
    cached, _ = _pair(bert, n, "mean")
    cached.eval()
    calls = []
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: calls.append(k))
             for k, m in enumerate(cached.backbone.encoder.layer)]
    if getattr(cached.backbone, "pooler", None) is not None:
        hooks.append(cached.backbone.pooler.register_forward_hook(lambda *a: calls.append("pooler")))
    cached.precompute(CAPS)
    for h in hooks:
        h.remove()
    assert calls == list(range(LAYERS - n))
    tok = cached.tokenize(CAPS)
    assert not bool(tok["attention_mask"].all())   # padding present
    with torch.no_grad():
        own = cached.backbone(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                              output_hidden_states=True).hidden_states[LAYERS - n]
    for i, c in enumerate(CAPS):
        L = int(tok["attention_mask"][i].sum())
        assert torch.equal(cached._cache[c][0], own[i, :L]), c


def test_state_noise_perturbs_only_training_and_needs_the_prefix(bert):
    """model.text.state_noise: noise on the cached prefix states in training only
    (eval outputs equal the noiseless encoder's), at the asked scale, and refused
    where there is no cached prefix."""
    from models.text_encoder import noisy_states
    torch.manual_seed(0)
    noisy = TextEncoder(bert, embed_dim=8, max_length=16, freeze_backbone=True, unfreeze_last_n=1,
                        dropout=0.0, state_noise=0.3)
    torch.manual_seed(0)
    clean = TextEncoder(bert, embed_dim=8, max_length=16, freeze_backbone=True, unfreeze_last_n=1, dropout=0.0)
    noisy.eval(), clean.eval()
    assert torch.equal(noisy(CAPS).features, clean(CAPS).features)
    noisy.train(), clean.train()
    assert not torch.allclose(noisy(CAPS).features, clean(CAPS).features)
    assert torch.equal(clean(CAPS).features, clean(CAPS).features)   # no dropout: only the noise differs
    h = torch.randn(64, 16, 32) * 3
    d = noisy_states(h, 0.3) - h
    rel = (d.pow(2).mean(-1).sqrt() / h.pow(2).mean(-1).sqrt()).mean()
    assert 0.27 < float(rel) < 0.33
    with pytest.raises(ValueError, match="state_noise"):
        TextEncoder(bert, embed_dim=8, freeze_backbone=True, unfreeze_last_n=0, state_noise=0.1)


def _save_tiny(path, model):
    from transformers import AutoTokenizer
    from models.text_encoder import resolve_model_path
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model_path(None)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory):
    """A random 32-wide MPNet (all-mpnet-base-v2's architecture): its layers take
    a relative position bias from the encoder besides the states and the mask."""
    from transformers import MPNetConfig, MPNetModel
    torch.manual_seed(0)
    model = MPNetModel(MPNetConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                   num_attention_heads=2, vocab_size=30522, max_position_embeddings=130,
                                   initializer_range=0.2)).eval()
    return _save_tiny(tmp_path_factory.mktemp("tiny_mpnet"), model)


@pytest.mark.parametrize("n", [1, LAYERS])
def test_an_mpnet_prefix_cache_equals_its_full_forward(mpnet, n):
    cached, full = _pair(mpnet, n, "mean")
    assert cached.prefix_layers == LAYERS - n
    cached.eval(), full.eval()
    for step in range(2):
        a, b = cached(CAPS), full(CAPS)
        assert torch.allclose(a.features, b.features, atol=1e-5), step
        assert torch.allclose(a.tokens[a.mask], b.tokens[b.mask], atol=1e-5), step
    a.features.square().sum().backward()
    b.features.square().sum().backward()
    ga, gb = _grads(cached), _grads(full)
    assert ga.keys() == gb.keys() and any(k.startswith("backbone.encoder.layer.") for k in ga)
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=1e-5), k


def test_a_layer_by_layer_run_that_differs_from_the_model_is_refused(bert, monkeypatch):
    """check_split: layers that need more than (states, mask) would train on
    wrong states; here a run that skips the position bias of MPNet is simulated
    by one that drops the last layer."""
    run = TextEncoder._run_layers
    monkeypatch.setattr(TextEncoder, "_run_layers", lambda self, h, m, layers: run(self, h, m, layers[:-1]))
    with pytest.raises(ValueError, match="layer-by-layer run of this 'bert' model differs"):
        TextEncoder(bert, embed_dim=8, freeze_backbone=True, unfreeze_last_n=1, cache_features=True)


def test_a_model_without_the_bert_layout_cannot_train_its_last_layers(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel
    path = _save_tiny(tmp_path / "distil", DistilBertModel(DistilBertConfig(
        dim=32, hidden_dim=64, n_layers=2, n_heads=2, vocab_size=30522)))
    with pytest.raises(ValueError, match="'distilbert' model has no embeddings \\+ encoder.layer"):
        TextEncoder(path, embed_dim=8, freeze_backbone=True, unfreeze_last_n=1)
    assert TextEncoder(path, embed_dim=8, freeze_backbone=True)(CAPS).features.shape == (len(CAPS), 8)
