"""The loop's outputs: TensorBoard scalars, results.jsonl, best-K checkpoints,
parameter groups, bf16 autocast, SIGTERM and Ctrl-C, no temporary files left."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from tests.conftest import ROOT, TINY_YAML


def test_run_writes_logs_results_and_best_checkpoints(tmp_path):
    import train_stage1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_dir = train_stage1.main(["--config", TINY_YAML, "--logs", str(tmp_path), "--name", "r",
                                 "--epochs", "3", "--keep-best", "2", "--keep-last", "1",
                                 "--precision", "amp_bf16", "--loss.use_siglip", "true",
                                 "--lr-multipliers", "{model.b: 0.5}"])
    ea = EventAccumulator(os.path.join(run_dir, "tensorboard")).Reload()
    tags = set(ea.Tags()["scalars"])
    for tag in ["train/loss", "train/loss_contrastive", "train/grad_norm", "train/samples_per_s",
                "train/data_wait_share", "train/peak_memory_mb", "train/logit_scale",
                "train/logit_bias", "val/loss", "val/t2i_R@1"]:
        assert tag in tags, tag
    assert any(t.startswith("lr/") and "x0.5" in t for t in tags)
    lines = [json.loads(x) for x in open(os.path.join(run_dir, "results.jsonl"))]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    ck = os.path.join(run_dir, "checkpoints")
    index = json.load(open(os.path.join(ck, "index.json")))
    best_steps = sorted(lines, key=lambda x: -x["val/t2i_R@1"])[:2]
    assert sorted(b[1] for b in index["best"]) == sorted(x["step"] for x in best_steps)
    assert len([f for f in os.listdir(ck) if f.startswith("best_step_")]) == 2
    assert len([f for f in os.listdir(ck) if f.startswith("step_")]) == 1
    assert not [f for f in os.listdir(ck) if ".tmp." in f]
    latest = torch.load(os.path.join(ck, "latest.pt"), weights_only=False)
    for key in ("model", "criterion", "optimizer", "scaler", "scheduler", "sampler", "train_state",
                "config", "git_commit"):
        assert key in latest, key
    # SigLIP's scale and bias were learned (they are in the optimizer)
    assert latest["criterion"]["logit_bias"].item() != -10.0
    # training reached far above chance (1/64) on held-out pairs
    assert lines[-1]["val/t2i_R@1"] > 0.5


def test_param_groups_decay_and_multipliers(tiny_cfg):
    from tests import tiny_family as fam
    from training.optim import param_groups
    tiny_cfg["lr_multipliers"] = {"model.b": 0.5}
    groups = param_groups({"model": fam.build_model(tiny_cfg),
                           "criterion": fam.build_criterion(tiny_cfg, 0, 1)}, tiny_cfg)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["criterion.logit_scale"]["weight_decay"] == 0
    assert by_name["model.a.3.weight"]["weight_decay"] == 0  # LayerNorm
    assert by_name["model.a.0.bias"]["weight_decay"] == 0
    assert by_name["model.a.0.weight"]["weight_decay"] == tiny_cfg["wd"]
    assert by_name["model.b.0.weight"]["lr_mult"] == 0.5 and by_name["model.a.0.weight"]["lr_mult"] == 1
    tiny_cfg["lr_multipliers"] = {"model.text": 0.5}
    import pytest
    with pytest.raises(ValueError, match="model.text"):
        param_groups({"model": fam.build_model(tiny_cfg)}, tiny_cfg)


def _start_slow_run(tmp_path, name):
    cmd = [sys.executable, os.path.join(ROOT, "train_stage1.py"), "--config", TINY_YAML, "--logs",
           str(tmp_path), "--name", name, "--val-every", "0", "--save-every", "0",
           "--data.delay_ms", "5", "--epochs", "50"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ck = tmp_path / name / "checkpoints"
    deadline = time.time() + 120
    while not (ck / "step_00000016.pt").exists():  # end of the first epoch
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    return proc, ck


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_and_exit_cleanly(tmp_path, sig):
    proc, ck = _start_slow_run(tmp_path, "t")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "saved step" in out
    latest = torch.load(ck / "latest.pt", weights_only=False)
    assert latest["train_state"]["step"] > 16 and latest["train_state"]["batch_in_epoch"] > 0


def test_second_ctrl_c_exits_at_once_without_saving(tmp_path):
    """Both signals inside the first step (32 items x 50 ms): the first is
    acknowledged on stderr, the second ends the run before any save."""
    cmd = [sys.executable, os.path.join(ROOT, "train_stage1.py"), "--config", TINY_YAML, "--logs",
           str(tmp_path), "--name", "t", "--val-every", "0", "--save-every", "1",
           "--data.delay_ms", "50", "--epochs", "50"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")),
                              daemon=True)
    reader.start()
    while not proc.stdout.readline().startswith("run "):  # printed just before the loop
        assert proc.poll() is None, "".join(err)[-2000:]
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    deadline = time.time() + 30
    while "saving after this step" not in "".join(err):
        assert proc.poll() is None and time.time() < deadline, "".join(err)[-2000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    proc.wait(timeout=60)
    reader.join(timeout=10)
    assert proc.returncode == 130, "".join(err)[-2000:]
    assert "exiting without saving" in "".join(err) and "saved step" not in out
    ck = tmp_path / "t" / "checkpoints"
    assert not (ck.exists() and [f for f in os.listdir(ck) if f.endswith(".pt")])


def test_stage2_loads_stage1_and_linear_keeps_encoder_frozen(tmp_path):
    import train_stage1
    import train_stage2
    run = train_stage1.main(["--config", TINY_YAML, "--logs", str(tmp_path), "--name", "s1",
                             "--epochs", "1", "--val-every", "0"])
    init = os.path.join(run, "checkpoints", "latest.pt")
    s1 = torch.load(init, weights_only=False)["model"]
    for mode in ("linear", "finetune"):
        train_stage2.main(["--config", TINY_YAML, "--init", init, "--mode", mode, "--logs",
                           str(tmp_path), "--name", mode])
        best = torch.load(tmp_path / mode / "checkpoints" / "best.pt", weights_only=False)["model"]
        same = all(torch.equal(best[f"encoder.{k[2:]}"], v) for k, v in s1.items()
                   if k.startswith("a."))
        assert same == (mode == "linear"), mode
        assert (tmp_path / mode / "metrics.json").exists()
    import pytest
    from training.config import ConfigError
    with pytest.raises(ConfigError, match="needs --init"):
        train_stage2.main(["--config", TINY_YAML, "--mode", "linear"])


def test_stage2_refuses_stage1_flags_by_the_key_to_use():
    import pytest
    import train_stage2
    from training.config import ConfigError
    with pytest.raises(ConfigError, match="use --stage2.epochs"):
        train_stage2.main(["--config", TINY_YAML, "--mode", "scratch", "--epochs", "3"])
    with pytest.raises(ConfigError, match="use --stage2.batch_size"):
        train_stage2.main(["--config", TINY_YAML, "--mode", "scratch", "--batch-size", "8"])
    with pytest.raises(ConfigError, match="--accum-freq: stage 2 does not use it"):
        train_stage2.main(["--config", TINY_YAML, "--mode", "scratch", "--accum-freq", "2"])


def test_stage2_fp16_uses_a_grad_scaler(tmp_path):
    """fp16 autocast (on CPU here) needs a GradScaler, or small gradients
    underflow to zero; stage 2 takes the stage-1 step with its scaler."""
    import train_stage2
    train_stage2.main(["--config", TINY_YAML, "--mode", "scratch", "--precision", "amp",
                       "--stage2.epochs", "1", "--logs", str(tmp_path), "--name", "fp16"])
    ck = torch.load(tmp_path / "fp16" / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["scaler"]["scale"] > 0  # an enabled scaler's state (a disabled one saves {})
    assert ck["train_state"]["step"] == 512 // 32 and ck["optimizer"]["state"]
    assert not [f for f in os.listdir(tmp_path / "fp16" / "checkpoints") if ".tmp." in f]


def test_stage2_resume_continues_as_the_uninterrupted_run(tmp_path, capsys):
    """frozen_then_finetune over 3 epochs (frozen for 1); resumed from the
    checkpoint of epoch 0 (before the switch) and of epoch 1 (after it)."""
    import shutil
    import train_stage1
    import train_stage2
    run = train_stage1.main(["--config", TINY_YAML, "--logs", str(tmp_path), "--name", "s1",
                             "--max-steps", "4", "--val-every", "0"])
    init = os.path.join(run, "checkpoints", "latest.pt")
    args = ["--config", TINY_YAML, "--init", init, "--mode", "frozen_then_finetune",
            "--stage2.epochs", "3", "--stage2.frozen_epochs", "1", "--keep-last", "5",
            "--logs", str(tmp_path), "--model.dropout", "0.2"]
    train_stage2.main(args + ["--name", "full"])
    full = torch.load(tmp_path / "full" / "checkpoints" / "latest.pt", weights_only=False)
    steps = sorted(f for f in os.listdir(tmp_path / "full" / "checkpoints") if f.startswith("step_"))
    assert len(steps) == 3
    for i, step_file in enumerate(steps[:2]):
        name = f"resumed{i}"
        shutil.copytree(tmp_path / "full", tmp_path / name)
        for later in steps[i + 1:]:
            os.remove(tmp_path / name / "checkpoints" / later)
        capsys.readouterr()
        train_stage2.main(args + ["--name", name, "--resume", "latest"])
        out = capsys.readouterr().out
        assert f"resuming stage 2 from" in out and f"(epoch {i})" in out
        assert f"epoch {i}:" not in out and "epoch 2:" in out  # only the epochs after it ran
        again = torch.load(tmp_path / name / "checkpoints" / "latest.pt", weights_only=False)
        assert again["train_state"] == full["train_state"]
        for k, v in full["model"].items():
            assert torch.equal(v, again["model"][k]), (name, k)


def test_eval_refuses_another_architecture_and_takes_another_split(tmp_path):
    import pytest
    import eval as eval_script
    import train_stage1
    from training.config import ConfigError
    run = train_stage1.main(["--config", TINY_YAML, "--logs", str(tmp_path), "--name", "e",
                             "--max-steps", "2", "--val-every", "0"])
    ckpt = os.path.join(run, "checkpoints", "latest.pt")
    with pytest.raises(ConfigError, match="fixes the architecture"):
        eval_script.main(["--checkpoint", ckpt, "--out", str(tmp_path / "o"),
                          "--model.embed_dim", "8"])
    m = eval_script.main(["--checkpoint", ckpt, "--out", str(tmp_path / "o"), "--split", "val",
                          "--data.num_val", "16"])
    info = json.load(open(tmp_path / "o" / "eval_info.json"))
    assert info["step"] == 2 and info["split"] == "val"
    assert set(m) == {"t2i_R@1", "t2i_R@10"}
    assert all(abs(v * 16 - round(v * 16)) < 1e-6 for v in m.values())  # shares of 16 queries
