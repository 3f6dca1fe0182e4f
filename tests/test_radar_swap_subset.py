"""Radar training step costs (issue 12): the order-swapped captions of the
single-action clips (their own caption, multiplied by 0 in the loss) are not
encoded, and ``model.text.dropout`` sets the trained text layers' dropout.
The loss and every gradient are the ones of encoding every swapped caption."""
import pytest
import torch

from losses.radar_loss import RadarContrastiveLoss
from models.radar.clip_model import CLIPModel
from models.radar.encoder import RadarEncoder
from models.text_encoder import TextEncoder
from models.text_head import text_side_config
from models.towers.text import TextTower
from tests.test_text_head import save_tiny_bert

D = 16


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_swap"), layers=2)


def make(bert, seed=0):
    torch.manual_seed(seed)
    text = TextEncoder(bert, embed_dim=D, max_length=32, freeze_backbone=True, unfreeze_last_n=1,
                       dropout=0.0)
    radar = RadarEncoder(embed_dim=D, radar_views="all", dropout=0.0, max_sequence_length=64,
                         num_layers=1, num_heads=2, downsample=8, pooling="eot")
    model = CLIPModel(radar, text, temporal_negatives=True).train()
    crit = RadarContrastiveLoss(D, use_sequence_similarity=True, sequence_similarity_type="temporal",
                                temporal_negative_weight=1.0)
    return model, crit


def batch_of(has):
    g = torch.Generator().manual_seed(0)
    B, T = len(has), 64
    caps = ["a person walks forward then jumps", "someone waves", "a man kicks, then he sits down",
            "the woman runs", "a girl turns around and then claps her hands twice"][:B]
    swapped = ["a person jumps then walks forward", caps[1], "a man sits down, then he kicks",
               caps[3], "a girl claps her hands twice and then turns around"][:B]
    return {"range_time": torch.randn(B, 256, T, generator=g), "doppler_time": torch.randn(B, 128, T, generator=g),
            "azimuth_time": torch.randn(B, 128, T, generator=g), "radar_mask": torch.ones(B, T, dtype=torch.bool),
            "caption": caps, "swapped_caption": swapped, "has_swap": torch.tensor(has)}


def loss_and_grads(bert, batch, subset):
    model, crit = make(bert)
    if not subset:   # every swapped caption through the tower (the code before issue 12's change)
        model.encode_swapped = lambda b, out: model.encode_text(b["swapped_caption"], "swap")
    loss, _ = crit(model(batch), batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in [*model.named_parameters(), *crit.named_parameters()]
             if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("has", [[True, False, True, False, True], [False, True, False, True, False],
                                 [True, True, True, True, True], [False, False, False, False, False]])
def test_single_action_rows_skip_the_text_tower_same_loss_and_gradients(bert, has):
    batch = batch_of(has)
    l_new, g_new = loss_and_grads(bert, batch, subset=True)
    l_old, g_old = loss_and_grads(bert, batch, subset=False)
    torch.testing.assert_close(l_new, l_old, atol=1e-5, rtol=1e-5)
    assert g_new.keys() == g_old.keys()
    assert any(k.startswith("text_encoder.backbone.encoder.layer.1.") for k in g_new)
    for k in g_new:
        torch.testing.assert_close(g_new[k], g_old[k], atol=1e-5, rtol=1e-4, msg=k)


def test_only_the_multi_action_rows_are_encoded(bert):
    model, _ = make(bert)
    seen = []
    real = model.encode_text
    model.encode_text = lambda caps, prefix="text": (seen.append((prefix, list(caps))), real(caps, prefix))[1]
    batch = batch_of([True, False, True, False, True])
    out = model(batch)
    assert seen[1] == ("swap", [batch["swapped_caption"][i] for i in (0, 2, 4)])
    # the other rows carry the caption's own features, without a gradient path
    torch.testing.assert_close(out["swap_features"][1], out["text_features"][1].detach())
    assert out["swap_tokens"].shape[:2] == out["swap_mask"].shape
    assert out["swap_mask"][1].sum() == out["text_mask"][1].sum()


def test_text_dropout_key(bert):
    on = TextEncoder(bert, embed_dim=D, freeze_backbone=True, unfreeze_last_n=1).train()
    off = TextEncoder(bert, embed_dim=D, freeze_backbone=True, unfreeze_last_n=1, dropout=0.0).train()
    ps = lambda enc: {m.p for m in enc.backbone.modules() if isinstance(m, torch.nn.Dropout)}
    assert ps(on) == {0.1} and ps(off) == {0.0}   # null: the checkpoint's own (BertConfig's 0.1)
    caps = ["a person walks forward then jumps", "someone waves"]
    assert torch.equal(off(caps).features, off(caps).features)      # no dropout in training
    assert not torch.equal(on(caps).features, on(caps).features)
    tower = TextTower({"pretrained": bert, "freeze": False, "unfreeze_last_n": 0, "layer_decay": 0.9,
                       "lr_mult": 1.0}, "model.text", D, 32, None, {"dropout": 0.25})
    assert ps(tower) == {0.25}
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="model.text.dropout"):
            text_side_config({"dropout": bad})
