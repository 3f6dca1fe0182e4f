"""The tower loader and config schema: missing and wrong-type folders,
the five keys checked by name."""
import pytest
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

from models.towers import TOWER_DEFAULTS, VisionTower, tower_config
from models.towers.loading import VISION_TYPES, load_tower


def test_a_missing_directory_names_the_key_and_the_path(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match=r"model.vision.pretrained: no such directory .*no-such-model"):
        VisionTower({"pretrained": missing})


def test_an_uncached_hub_id_says_it_never_downloads():
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache; this code "
                                                "never downloads"):
        load_tower("nobody-here/not-a-cached-model", VISION_TYPES, "model.vision.pretrained")


def test_a_folder_without_config_json(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        VisionTower({"pretrained": str(tmp_path)})


def test_a_folder_of_another_model_type_says_what_it_found_and_expected(tmp_path):
    BertModel(BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model.vision.pretrained: .* holds a model of type 'bert' "
                                         r"\(architectures \['BertModel'\]\); expected one of "
                                         r"\['clip', 'clip_vision_model', 'vit'\]"):
        VisionTower({"pretrained": str(tmp_path)})


def test_tower_config_fills_defaults_and_checks_each_key():
    assert tower_config({}) == TOWER_DEFAULTS
    assert tower_config({"freeze": True, "unfreeze_last_n": 2, "other": 1})["unfreeze_last_n"] == 2
    bad = [({"freeze": "yes"}, "model.audio.freeze: expected true or false"),
           ({"unfreeze_last_n": 2}, r"model.audio.unfreeze_last_n=2 needs model.audio.freeze: true"),
           ({"freeze": True, "unfreeze_last_n": -1}, "expected an integer >= 0"),
           ({"layer_decay": 1.5}, r"model.audio.layer_decay: expected a number in \(0, 1\]"),
           ({"lr_mult": -1}, "model.audio.lr_mult: expected a number >= 0"),
           ({"pretrained": 3}, "model.audio.pretrained: expected null or a model folder")]
    for section, message in bad:
        with pytest.raises(ValueError, match=message):
            tower_config(section, "model.audio")


def test_unfreeze_more_blocks_than_the_model_has():
    model = ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=2, image_size=16, patch_size=8))
    with pytest.raises(ValueError, match="unfreeze_last_n=3 but the model has 2 blocks"):
        VisionTower({"freeze": True, "unfreeze_last_n": 3}, backbone=model)
