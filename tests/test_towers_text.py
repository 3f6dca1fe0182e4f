"""Text towers: a tiny CLIP text model and a tiny CLAP (RoBERTa) text model
saved with a fast tokenizer (the bundled MiniLM's), and the bundled default."""
import pytest
import torch
from transformers import (AutoTokenizer, ClapTextConfig, ClapTextModel, CLIPTextConfig, CLIPTextModel,
                          CLIPVisionConfig, CLIPVisionModel)

from models.text_encoder import TextEncoder, TextOutput, resolve_model_path
from models.towers import TextTower, build_text_encoder

CAPS = ["a person walks forward", "someone jumps twice then waves"]
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            vocab_size=30522, pad_token_id=0, bos_token_id=101, eos_token_id=102)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(resolve_model_path(None))
    out = {}
    torch.manual_seed(0)
    for name, model in (("clip", CLIPTextModel(CLIPTextConfig(max_position_embeddings=32, **TINY))),
                        ("clap", ClapTextModel(ClapTextConfig(max_position_embeddings=40, **TINY)))):
        path = tmp_path_factory.mktemp(name)
        model.eval().save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = (str(path), model, tok)
    return out


@pytest.mark.parametrize("arch", ["clip", "clap"])
def test_text_tower_equals_the_models_own_forward(folders, arch):
    path, ref, tok = folders[arch]
    tower = TextTower({"pretrained": path}, embed_dim=8).eval()
    assert tower.pooling == "pooler"    # CLIP: end-of-text token; CLAP: the RoBERTa pooler
    out = tower(CAPS)
    assert isinstance(out, TextOutput)
    inputs = tok(CAPS, padding=True, return_tensors="pt")
    own = ref(**inputs)
    assert torch.allclose(out.features, tower.proj(own.pooler_output), atol=1e-5)
    assert torch.allclose(out.tokens, tower.proj(own.last_hidden_state), atol=1e-5)
    if arch == "clip":   # the pooled feature is the first [SEP] (eos) token's
        eos = (inputs["input_ids"] == 102).int().argmax(1)
        assert torch.allclose(own.pooler_output, own.last_hidden_state[torch.arange(2), eos])
    # offsets point back into the caption (specials are (0, 0))
    s, e = out.offsets[1, 1].tolist()
    assert CAPS[1][s:e] == tok.convert_ids_to_tokens(out.input_ids[1, 1].item())
    assert out.offsets[1, 0].tolist() == [0, 0]


def test_bundled_minilm_when_pretrained_is_null():
    tower = TextTower({"pretrained": None, "freeze": True}, embed_dim=8)
    assert tower.pooling == "mean" and tower.frozen
    assert type(tower.backbone).__name__ == "BertModel"
    # by name too (TimesCLIP's language branch on MiniLM: model.language.pretrained)
    named = TextTower({"pretrained": "all-MiniLM-L6-v2"}, key="model.language")
    assert named.source == tower.source
    unfrozen = TextTower({"pretrained": None}, embed_dim=8)
    # mean pooling never reads BERT's pooler: it must not train (DDP: no unused parameters)
    trainable = {n for n, p in unfrozen.named_parameters() if p.requires_grad}
    assert "backbone.encoder.layer.0.attention.self.query.weight" in trainable
    assert not any(n.startswith("backbone.pooler.") for n in trainable)
    assert "MiniLM" in tower.summary("model.text") or "minilm" in tower.summary("model.text").lower()


def test_clip_text_body_on_embeddings_equals_the_token_path(folders):
    """TimesCLIP's language branch: the body fed embeddings instead of ids."""
    path, ref, tok = folders["clip"]
    tower = TextTower({"pretrained": path}).eval()
    ids = tok(CAPS[:1], return_tensors="pt")["input_ids"]
    embeds = ref.embeddings.token_embedding(ids)
    assert torch.allclose(tower.encode_embeds(embeds), ref(input_ids=ids).last_hidden_state,
                          atol=1e-5)


def test_a_vision_folder_is_not_a_text_tower(tmp_path):
    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=16,
                                     patch_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="type 'clip_vision_model'.*has no text tower"):
        TextTower({"pretrained": str(tmp_path)})


def test_build_text_encoder_keeps_todays_encoder_by_default(folders):
    """Defaults: TextEncoder as today (its cache, the quick presets' numbers);
    a CLIP checkpoint or layer decay: the TextTower, with the family's keys."""
    enc = build_text_encoder({"pretrained": None, "freeze": True, "max_length": 20,
                              "cache_features": True}, embed_dim=8)
    assert type(enc) is TextEncoder and enc.cache_features and enc.max_length == 20
    clip = build_text_encoder({"pretrained": folders["clip"][0], "max_length": 20}, embed_dim=8)
    assert type(clip) is TextTower and clip.max_length == 20 and clip.pooling == "pooler"
    decayed = build_text_encoder({"pretrained": None, "layer_decay": 0.8,
                                  "pooling_strategy": "cls"}, embed_dim=8)
    assert type(decayed) is TextTower and decayed.pooling == "cls"
