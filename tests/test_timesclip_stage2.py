"""Stage 2 through the real loop (train_stage2.main): the stage-1 weights are
loaded, a frozen encoder stays unchanged, fine-tuning moves it; the family's
stage-1 contract runs end to end on tiny data."""
import json
import os

import pytest
import torch

import train_stage2
from families import timesclip as fam
from families.timesclip import stage2 as fam_stage2
from training.io import atomic_save
from training.config import load_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = ["--data.n_regions", "2", "--data.years", "[2018, 2019, 2020]",
        "--data.fields_per_region_year", "24", "--data.train_years", "[2018]",
        "--data.val_years", "[2019]", "--data.test_years", "[2020]",
        "--model.d_model", "16", "--model.embed_dim", "16", "--model.n_layers", "1",
        "--model.n_heads", "2", "--model.image_size", "16", "--model.vision_patch", "8",
        "--model.vision_width", "16", "--model.vision_layers", "1", "--workers", "0"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tc_s2")
    cfg = load_config(["--family", "timesclip", "--data.root", str(tmp / "data"),
                       "--precision", "fp32"] + TINY)
    fam.prepare_data(cfg)
    ds = fam.build_datasets(cfg)
    torch.manual_seed(0)
    model, crit = fam.build_model(cfg), fam.build_criterion(cfg)
    opt = torch.optim.AdamW(list(model.parameters()) + list(crit.parameters()), lr=1e-3)
    batch = fam.collate([ds["train"][i] for i in range(16)])
    for _ in range(2):
        loss, logs = crit(model(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert {"mse", "align"} <= set(logs)
    m = fam.evaluate(model, crit, ds["val"], cfg, torch.device("cpu"), out_dir=str(tmp / "eval"))
    assert {"completion_rmse", "completion_rmse_pct_range", "completion_mae", "v2l_R@1"} <= set(m)
    assert os.path.exists(tmp / "eval" / "forecasts.png")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = str(tmp / "stage1.pt")
    atomic_save({"model": state, "criterion": crit.state_dict(), "config": cfg}, path)
    return tmp, path, state


def _run(tmp, init, mode, epochs=2):
    argv = ["--family", "timesclip", "--mode", mode, "--logs", str(tmp / "logs"),
            "--name", mode, "--stage2.epochs", str(epochs), "--stage2.frozen_epochs", "1",
            "--stage2.batch_size", "16", "--workers", "0"]
    argv += ["--init", init] if init else ["--data.root", str(tmp / "data")] + TINY
    test = train_stage2.main(argv)
    best = torch.load(tmp / "logs" / mode / "checkpoints" / "best.pt", map_location="cpu",
                      weights_only=False)
    return test, {k[len("encoder."):]: v for k, v in best["model"].items() if k.startswith("encoder.")}


def test_linear_mode_loads_stage1_and_keeps_the_encoder_frozen(stage1):
    tmp, path, state = stage1
    test, enc = _run(tmp, path, "linear")
    assert set(enc) == set(state)
    for k in state:
        assert torch.equal(enc[k], state[k]), k
    for key in ("yield_rmse", "yield_mae", "yield_r2", "yield_r2_ridge", "yield_r2_mean"):
        assert key in test
    with open(tmp / "logs" / "linear" / "metrics.json") as f:
        assert "yield_r2_ridge" in json.load(f)
    assert os.path.exists(tmp / "logs" / "linear" / "yield_scatter.png")


def test_finetune_moves_the_loaded_encoder(stage1):
    tmp, path, state = stage1
    _, enc = _run(tmp, path, "finetune", epochs=1)   # one epoch: best.pt is the fine-tuned one
    moved = [k for k in state if state[k].is_floating_point() and not torch.equal(enc[k], state[k])]
    assert moved and any(k.startswith("language.") for k in moved)


def test_scratch_does_not_load_and_bad_state_is_refused(stage1):
    tmp, path, state = stage1
    _, enc = _run(tmp, None, "scratch", epochs=1)
    w = "language.patch.tokenizer.weight"
    assert not torch.equal(enc[w], state[w])
    cfg = load_config(["--family", "timesclip", "--data.root", str(tmp / "data")] + TINY)
    bad = dict(state)
    bad.pop(w)
    with pytest.raises(RuntimeError, match="tokenizer"):
        fam.build_stage2(cfg, bad, "linear")


def test_frozen_then_finetune_freezes_then_moves_the_encoder(stage1, monkeypatch):
    """Two frozen epochs (the encoder bit-identical to stage 1's, the head
    learning), then fine-tuning moves the encoder. The states are read at
    each epoch's validation, which the loop calls with the model."""
    tmp, path, state = stage1
    seen, real = [], fam_stage2.yield_metrics

    def recording_metrics(model, dataset, cfg, device, out_dir=None):
        seen.append(({k: v.detach().clone() for k, v in model.encoder.state_dict().items()},
                     {k: v.detach().clone() for k, v in model.head.state_dict().items()}))
        return real(model, dataset, cfg, device, out_dir)

    monkeypatch.setattr(fam_stage2, "yield_metrics", recording_metrics)
    argv = ["--family", "timesclip", "--mode", "frozen_then_finetune", "--init", path,
            "--logs", str(tmp / "logs"), "--name", "ftf", "--stage2.epochs", "3",
            "--stage2.frozen_epochs", "2", "--stage2.batch_size", "16", "--workers", "0"]
    train_stage2.main(argv)
    assert len(seen) == 4                               # 3 validations + the test split
    for enc, _ in seen[:2]:                             # phase 1: frozen
        assert set(enc) == set(state)
        for k in state:
            assert torch.equal(enc[k], state[k]), k
    head0, head1 = seen[0][1], seen[1][1]
    assert any(not torch.equal(head0[k], head1[k]) for k in head0)   # the head trained meanwhile
    enc2 = seen[2][0]                                   # phase 2: fine-tuned
    moved = [k for k in state if state[k].is_floating_point() and not torch.equal(enc2[k], state[k])]
    assert any(k.startswith("language.") for k in moved) and any(k.startswith("vision.") for k in moved)
