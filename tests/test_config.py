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
