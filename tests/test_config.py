import pytest

from training.config import ConfigError, load_config
from tests.conftest import TINY_YAML


def test_cli_overrides_nested_and_dashed_keys():
    cfg = load_config(["--config", TINY_YAML, "--batch-size", "16", "--model.embed_dim=4",
                       "--grad-checkpointing"])
    assert cfg["batch_size"] == 16 and cfg["model"]["embed_dim"] == 4
    assert cfg["grad_checkpointing"] is True
    assert cfg["lr"] == 1.0e-2  # from the YAML, over the training default


def test_preset_applies_and_cli_wins_over_preset():
    cfg = load_config(["--config", TINY_YAML, "--preset", "quick"])
    assert cfg["epochs"] == 1
    cfg = load_config(["--config", TINY_YAML, "--preset", "quick", "--epochs", "3"])
    assert cfg["epochs"] == 3


@pytest.mark.parametrize("argv, name", [
    (["--batch-sise", "3"], "batch_sise"),
    (["--model.embed_dims", "3"], "model.embed_dims"),
    (["--preset", "nope"], "nope"),
])
def test_unknown_keys_are_refused_by_name(argv, name):
    with pytest.raises(ConfigError, match=name):
        load_config(["--config", TINY_YAML] + argv)


def test_unknown_key_in_yaml_is_refused(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(open(TINY_YAML).read() + "\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*batchsize.*did you mean .*batch_size"):
        load_config(["--config", str(p)])


def test_every_family_yaml_resolves():
    import os
    from training.config import REPO_ROOT
    for fam in ("radar", "sclap", "timesclip", "grounding"):
        path = os.path.join(REPO_ROOT, "configs", f"{fam}.yaml")
        if os.path.exists(path):
            cfg = load_config(["--family", fam, "--preset", "quick"])
            assert cfg["family"] == fam


def test_numbers_in_exponent_form_and_strings_that_look_numeric():
    cfg = load_config(["--config", TINY_YAML, "--lr", "1e-4", "--name", "nan", "--wd", "2E-3"])
    assert cfg["lr"] == 1e-4 and cfg["wd"] == 2e-3 and cfg["name"] == "nan"
    with pytest.raises(ConfigError, match="lr expects a number"):
        load_config(["--config", TINY_YAML, "--lr", "fast"])


@pytest.mark.parametrize("argv, msg", [
    (["--batch-size", "32.5"], "batch_size expects an integer"),
    (["--max-steps", "abc"], "max_steps expects an integer"),
    (["--grad-checkpointing", "yes"], "grad_checkpointing expects true or false"),
    (["--model.embed_dim", "abc"], "model.embed_dim expects an integer"),
    (["--loss.use_siglip", "1"], "loss.use_siglip expects true or false"),
    (["--lr-multipliers", "2"], "lr_multipliers expects a mapping"),
])
def test_override_must_have_the_defaults_type(argv, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(["--config", TINY_YAML] + argv)


def test_typed_values_are_converted():
    cfg = load_config(["--config", TINY_YAML, "--lr", "1", "--max-steps", "1e3",
                       "--grad-clip-norm", "2", "--name", "2024", "--loss.use_siglip", "false"])
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["max_steps"] == 1000 and isinstance(cfg["max_steps"], int)
    assert cfg["grad_clip_norm"] == 2.0 and cfg["name"] == "2024"
    assert cfg["loss"]["use_siglip"] is False


def test_user_maps_are_values_not_schemas():
    # radar's default map names the text tower; another prefix replaces the whole map
    cfg = load_config(["--family", "radar", "--lr-multipliers", "{model.radar_encoder: 2}",
                       "--data.sim", "{snr_db: 3}"])
    assert cfg["lr_multipliers"] == {"model.radar_encoder": 2}
    assert cfg["data"]["sim"] == {"snr_db": 3}


def test_stage2_keys_are_in_the_schema_for_every_family():
    for fam in ("radar", "sclap", "timesclip", "grounding"):
        cfg = load_config(["--family", fam, "--stage2.pct_start", "0.3"])
        assert cfg["stage2"]["pct_start"] == 0.3 and "frozen_epochs" in cfg["stage2"]
    with pytest.raises(ConfigError, match="stage2.pct_startt"):
        load_config(["--config", TINY_YAML, "--stage2.pct_startt", "0.3"])


def test_a_key_the_yaml_leaves_null_stays_nullable_after_a_preset():
    cfg = load_config(["--family", "radar", "--preset", "quick"])
    assert cfg["model"]["text"]["dropout"] == 0.0            # the preset's value
    cfg = load_config(["--family", "radar", "--preset", "quick", "--model.text.dropout", "null"])
    assert cfg["model"]["text"]["dropout"] is None           # the YAML's null: the checkpoint's own
    # a key the YAML gives a number does not become nullable
    with pytest.raises(ConfigError, match="model.embed_dim expects an integer"):
        load_config(["--family", "radar", "--preset", "quick", "--model.embed_dim", "null"])
