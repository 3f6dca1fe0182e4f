"""The text side of issue 13 (models/text_head.py) on a tiny random BERT saved
locally: off = the numbers of commit 3fd75df, a new head is the identity, a
trained head reads order that an order-blind backbone cannot, token dropout,
state dict, config keys and optimizer groups."""
import importlib.util
import subprocess

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from models.radar.clip_model import text_section
from models.text_encoder import TextEncoder, resolve_model_path
from models.text_head import content_tokens, text_side_config
from models.towers import TextTower, build_text_encoder
from training.optim import param_groups

CAPS = ["a person walks forward then jumps", "someone waves, then sits down slowly", "run"]
BEFORE = "3fd75df"   # the last commit before the text side (issue 13)


def save_tiny_bert(path, layers=3, seed=0, positions=True):
    """A 32-wide random BertModel with the bundled MiniLM's tokenizer, saved as
    a user's download would be. ``positions=False`` zeroes the position
    embeddings: the backbone is then blind to word order (self-attention and
    mean pooling are permutation-equivariant / -invariant)."""
    torch.manual_seed(seed)
    model = BertModel(BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                 num_attention_heads=2, vocab_size=30522,
                                 max_position_embeddings=128, initializer_range=0.2)).eval()
    if not positions:
        with torch.no_grad():
            model.embeddings.position_embeddings.weight.zero_()
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model_path(None)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def old_text_encoder_module(tmp_path):
    """models/text_encoder.py as it was at commit 3fd75df, imported from a copy."""
    try:
        src = subprocess.run(["git", "show", f"{BEFORE}:models/text_encoder.py"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"commit {BEFORE} is not in this checkout (a shallow clone?)")
    path = tmp_path / "text_encoder_3fd75df.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("text_encoder_3fd75df", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pooling,freeze", [("mean", True), ("cls", True), ("max", True),
                                            ("pooler", True), ("mean", False), ("pooler", False)])
def test_off_is_bit_identical_to_before(bert, tmp_path, pooling, freeze):
    old = old_text_encoder_module(tmp_path)
    kw = dict(model_name=bert, embed_dim=8, max_length=16, pooling_strategy=pooling,
              freeze_backbone=freeze)
    torch.manual_seed(1)
    ref = old.TextEncoder(**kw).train()
    torch.manual_seed(1)
    new = build_text_encoder({"pretrained": bert, "freeze": freeze, "max_length": 16,
                              "pooling_strategy": pooling}, embed_dim=8).train()
    assert isinstance(new, TextEncoder) and new.head is None
    assert ref.state_dict().keys() == new.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, new.state_dict()[k]), k           # the same seeded draws
    for step in range(2):   # the second call is served from the caption cache when frozen
        torch.manual_seed(step)   # a trainable backbone: the same dropout masks
        a = ref(CAPS)
        torch.manual_seed(step)
        b = new(CAPS)
        for f in ("features", "tokens", "mask", "offsets", "input_ids"):
            assert torch.equal(getattr(a, f), getattr(b, f)), (step, f)
    a.features.square().sum().backward()
    b.features.square().sum().backward()
    for (n, p), q in zip(ref.named_parameters(), new.parameters()):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), n


@pytest.mark.parametrize("width", [None, 16])
def test_a_new_head_is_the_identity(bert, width):
    torch.manual_seed(0)
    plain = TextEncoder(bert, embed_dim=8, max_length=16).eval()
    torch.manual_seed(0)
    headed = TextEncoder(bert, embed_dim=8, max_length=16, head_layers=2, head_dim=width).eval()
    a, b = plain(CAPS), headed(CAPS)
    assert torch.equal(a.features, b.features) and torch.equal(a.tokens, b.tokens)
    # it trains: the zero output projection gets a gradient at once
    b.features.square().sum().backward()
    assert headed.head.out.weight.grad.abs().sum() > 0
    assert headed.head.pos.shape == (16, width or 32)
    assert not any(p.requires_grad for p in headed.backbone.parameters())


def _order_task(enc, steps=50):
    """Train ``enc``'s trainable parts and a linear score to tell two captions
    (label 1) from their order-swapped versions (label 0). -> (probabilities
    [4], features [4, D]) after training."""
    caps = ["a person walks then jumps", "someone waves then sits",
            "a person jumps then walks", "someone sits then waves"]
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    torch.manual_seed(0)
    score = torch.nn.Linear(8, 1)
    params = [p for p in enc.parameters() if p.requires_grad] + list(score.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    enc.train()
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            score(enc(caps).features).squeeze(1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        feats = enc(caps).features
        return torch.sigmoid(score(feats).squeeze(1)), feats


def test_the_head_reads_order_an_order_blind_backbone_cannot(tmp_path):
    blind = save_tiny_bert(tmp_path / "blind", layers=2, positions=False)
    torch.manual_seed(0)
    plain = TextEncoder(blind, embed_dim=8, max_length=16)
    torch.manual_seed(0)
    headed = TextEncoder(blind, embed_dim=8, max_length=16, head_layers=1)
    p_plain, f_plain = _order_task(plain)
    p_head, f_head = _order_task(headed)
    # without the head a caption and its swap get the same features: chance at best
    assert torch.allclose(f_plain[:2], f_plain[2:], atol=1e-5)
    assert torch.allclose(p_plain[:2], p_plain[2:], atol=1e-5)
    # with it, after 50 steps, every caption is told from its swap
    assert (p_head[:2] > 0.9).all() and (p_head[2:] < 0.1).all(), p_head
    assert (f_head[:2] - f_head[2:]).norm(dim=1).min() > 0.1 * f_head.norm(dim=1).mean()


def test_token_dropout_drops_content_tokens_only_and_only_in_training(bert):
    torch.manual_seed(0)
    plain = TextEncoder(bert, embed_dim=8, max_length=16).eval()
    torch.manual_seed(0)
    drop = TextEncoder(bert, embed_dim=8, max_length=16, token_dropout=0.5).eval()
    a, b = plain(CAPS), drop(CAPS)
    for f in ("features", "tokens", "mask"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f          # eval: untouched
    drop.train()
    torch.manual_seed(3)
    kept, dropped = 0, 0
    for _ in range(20):
        out = drop(CAPS)
        content = content_tokens(a.mask, a.offsets)
        assert torch.equal(out.mask & ~content, a.mask & ~content)  # [CLS], [SEP] stay; padding stays out
        assert not (out.mask & ~a.mask).any()
        assert (out.mask & content).any(1).all()                    # every caption keeps a word
        kept += (out.mask & content).sum().item()
        dropped += (content & ~out.mask).sum().item()
        # the pooled feature is the mean over the kept tokens (hand computation)
        m = out.mask.unsqueeze(-1).float()
        hidden = drop._cached_backbone(CAPS, drop.tokenize(CAPS), torch.device("cpu"))[0]
        assert torch.allclose(out.features, drop.proj((hidden * m).sum(1) / m.sum(1)), atol=1e-6)
    # "run" has one content token: it can never go; the other 13 go half of the time
    assert 0.35 < dropped / (kept + dropped - 20) < 0.65
    # a caption whose every word would go keeps them all
    always = TextEncoder(bert, embed_dim=8, max_length=16, token_dropout=0.999).train()
    out = always(CAPS)
    assert torch.equal(out.mask, a.mask)


def test_state_dict_round_trip_with_a_trained_head(bert):
    torch.manual_seed(0)
    enc = TextEncoder(bert, embed_dim=8, max_length=16, head_layers=1, head_heads=2,
                      token_dropout=0.1).train()
    opt = torch.optim.Adam([p for p in enc.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        enc(CAPS).features.square().sum().backward()
        opt.step()
        opt.zero_grad()
    state = enc.state_dict()
    assert any(k.startswith("head.layers.0.") for k in state) and "head.pos" in state
    assert not any("cache" in k for k in state)
    torch.manual_seed(5)   # other initial weights
    again = TextEncoder(bert, embed_dim=8, max_length=16, head_layers=1, head_heads=2,
                        token_dropout=0.1)
    again.load_state_dict(state)
    enc.eval(), again.eval()
    assert torch.equal(enc(CAPS).features, again(CAPS).features)
    assert enc.head.out.weight.abs().sum() > 0                       # it did train
    with pytest.raises(RuntimeError, match="head"):                  # a headless model refuses it
        TextEncoder(bert, embed_dim=8, max_length=16).load_state_dict(state)


def test_keys_are_checked_by_name(bert):
    with pytest.raises(ValueError, match="model.text.head_heads=3 does not divide"):
        build_text_encoder({"pretrained": bert, "freeze": True, "head_layers": 1, "head_heads": 3})
    for bad, match in (({"token_dropout": 1.0}, "model.text.token_dropout"),
                       ({"head_layers": -1}, "model.text.head_layers"),
                       ({"head_dim": "wide"}, "model.text.head_dim")):
        with pytest.raises(ValueError, match=match):
            build_text_encoder({"pretrained": bert, "freeze": True, **bad})
    with pytest.raises(ValueError, match="pooling_strategy cls, mean or max"):
        build_text_encoder({"pretrained": bert, "freeze": True, "head_layers": 1,
                            "pooling_strategy": "pooler"})


def test_old_configs_mean_off(bert):
    # radar: a checkpoint's model.text from before issue 11 (and 13)
    old = {"model_name": bert, "freeze_backbone": True, "max_length": 16,
           "pooling_strategy": "mean", "unfreeze_last_n": 0, "cache_features": True}
    t = text_section(old)
    assert text_side_config(t) == {"head_layers": 0, "head_heads": 4, "head_dim": None,
                                   "token_dropout": 0.0, "dropout": None, "state_noise": 0.0}
    enc = build_text_encoder(t, embed_dim=8)
    assert enc.head is None and enc.token_dropout == 0.0
    assert build_text_encoder(dict(t, head_layers=1), embed_dim=8).head is not None


def test_the_head_trains_at_the_normal_lr(bert):
    torch.manual_seed(0)
    enc = build_text_encoder({"pretrained": bert, "freeze": True, "head_layers": 1,
                              "head_heads": 2, "max_length": 16}, embed_dim=8)
    cfg = {"wd": 0.1, "lr_multipliers": {}}
    mult = {n: g["lr_mult"] for g in param_groups({"model.text_encoder": enc}, cfg) for n in g["names"]}
    assert {n for n in mult if ".head." in n} == {f"model.text_encoder.{n}" for n, _ in
                                                  enc.head.named_parameters(prefix="head")}
    assert set(mult.values()) == {1.0} and not any(".backbone." in n for n in mult)
    # a family's lr_multipliers (radar: the text tower at lr/2) reach it as they reach proj
    cfg = {"wd": 0.1, "lr_multipliers": {"model.text_encoder": 0.5}}
    mult = {n: g["lr_mult"] for g in param_groups({"model.text_encoder": enc}, cfg) for n in g["names"]}
    assert mult["model.text_encoder.head.pos"] == mult["model.text_encoder.proj.weight"] == 0.5
    # a TextTower under layer decay / lr_mult: the backbone's lr shrinks, the head's is 1
    torch.manual_seed(0)
    tower = build_text_encoder({"pretrained": bert, "freeze": False, "head_layers": 1,
                                "head_heads": 2, "layer_decay": 0.5, "lr_mult": 0.1,
                                "pooling_strategy": "mean", "max_length": 16}, embed_dim=8)
    assert isinstance(tower, TextTower)
    mult = {n: g["lr_mult"] for g in param_groups({"t": tower}, {"wd": 0.1}) for n in g["names"]}
    L = tower.num_blocks
    assert mult["t.head.pos"] == mult["t.head.layers.0.linear1.weight"] == 1.0
    assert mult["t.backbone.encoder.layer.0.output.dense.weight"] == pytest.approx(0.1 * 0.5 ** L)
    # and it runs: a new head is the identity in a TextTower too
    torch.manual_seed(0)
    bare = build_text_encoder({"pretrained": bert, "freeze": False, "layer_decay": 0.5,
                               "lr_mult": 0.1, "pooling_strategy": "mean", "max_length": 16},
                              embed_dim=8).eval()
    assert torch.equal(tower.eval()(CAPS).features, bare(CAPS).features)
