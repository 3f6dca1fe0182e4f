"""Runs survive SIGKILL: resumption is bit-identical, checkpoints are atomic,
non-finite steps are skipped and then stop the run with the last good
checkpoint intact."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from tests.conftest import ROOT, TINY_YAML

PY = sys.executable


def _run_args(logs, name, *extra, val_every=0):
    return [PY, os.path.join(ROOT, "train_stage1.py"), "--config", TINY_YAML, "--logs", str(logs),
            "--name", name, "--val-every", str(val_every), *extra]


def _weights(path):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    return ck, {**{f"m.{k}": v for k, v in ck["model"].items()},
                **{f"c.{k}": v for k, v in ck["criterion"].items()}}


def _val_lines(run_dir):
    lines = [json.loads(x) for x in open(run_dir / "results.jsonl")]
    return [{k: v for k, v in x.items() if k != "time"} for x in lines if x["split"] == "val"]


def test_sigkill_then_resume_is_bit_identical_with_validation(tmp_path):
    """Validation at the end of epoch 0 (step 16) before the kill at step 20 and
    at step 24 after the resume; 16 steps an epoch, a checkpoint every 10."""
    common = ["--data.num_train", "512", "--max-steps", "24", "--save-every", "10",
              "--model.dropout", "0.2"]
    full = subprocess.run(_run_args(tmp_path, "full", *common, val_every=1), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr[-2000:]

    # Same run, slowed down by data loading so it can be killed after step 20.
    ckdir = tmp_path / "killed" / "checkpoints"
    proc = subprocess.Popen(_run_args(tmp_path, "killed", *common, "--data.delay_ms", "10",
                                      val_every=1),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (ckdir / "step_00000020.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ckdir / "step_00000024.pt").exists(), "run ended before it could be killed"
    # latest.pt may not be relinked yet; --resume latest takes the newest step file.
    from training.checkpoint import find_resume
    ck, _ = _weights(find_resume("latest", str(tmp_path / "killed")))
    assert ck["train_state"]["step"] == 20

    res = subprocess.run(_run_args(tmp_path, "killed", *common, "--resume", "latest",
                                   val_every=1), cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout
    # data.delay_ms is the checkpoint's (10) though the YAML says 0: reported, not an error
    assert "config file differs from the checkpoint in data.delay_ms" in res.stdout
    a_ck, a = _weights(tmp_path / "full" / "checkpoints" / "latest.pt")
    b_ck, b = _weights(ckdir / "latest.pt")
    assert a_ck["train_state"]["step"] == b_ck["train_state"]["step"] == 24
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for sa, sb in zip(a_ck["optimizer"]["state"].values(), b_ck["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    full_val, killed_val = _val_lines(tmp_path / "full"), _val_lines(tmp_path / "killed")
    assert [x["step"] for x in full_val] == [16, 24]
    assert killed_val == full_val


def test_resume_refuses_a_changed_architecture_and_takes_a_new_schedule_length(tmp_path):
    import pytest
    import train_stage1
    from training.config import ConfigError
    args = ["--config", TINY_YAML, "--logs", str(tmp_path), "--name", "r", "--val-every", "0",
            "--max-steps", "4"]
    train_stage1.main(args)
    with pytest.raises(ConfigError, match=r"checkpoint fixes model.embed_dim \(checkpoint 16, now 8\)"):
        train_stage1.main(args + ["--resume", "latest", "--model.embed_dim", "8"])
    with pytest.raises(ConfigError, match="checkpoint fixes lr"):
        train_stage1.main(args + ["--resume", "latest", "--lr", "0.5"])
    train_stage1.main(args[:-1] + ["6", "--resume", "latest"])  # --max-steps 6: may change
    ck = torch.load(tmp_path / "r" / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["train_state"]["step"] == 6 and ck["config"]["max_steps"] == 6


WRITER = r"""
import sys, torch
from training.checkpoint import CheckpointManager
m = CheckpointManager(sys.argv[1], keep_last=2, keep_best=0)
m.save({"model": {"w": torch.ones(3)}, "config": {}, "step": 1}, 1)
print("first", flush=True)
m.save({"model": {"w": torch.zeros(200_000_000)}, "config": {}, "step": 2}, 2)
print("second", flush=True)
"""


def test_sigkill_during_checkpoint_write_keeps_previous(tmp_path):
    from training.checkpoint import CheckpointManager, load_checkpoint
    d = tmp_path / "ck"
    proc = subprocess.Popen([PY, "-c", WRITER, str(d)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "first"
    deadline = time.time() + 60
    while not any(".tmp." in f and f.startswith("step_00000002") for f in os.listdir(d)):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.001)
    time.sleep(0.05)  # in the middle of writing 800 MB
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (d / "step_00000002.pt").exists()
    ck = load_checkpoint(str(d / "latest.pt"))
    assert ck["step"] == 1 and torch.equal(ck["model"]["w"], torch.ones(3))
    # the next save cleans up the torn temporary file
    CheckpointManager(str(d)).save({"model": {}, "config": {}, "step": 3}, 3)
    assert not [f for f in os.listdir(d) if ".tmp." in f]


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    res = subprocess.run(_run_args(tmp_path, "nan", "--loss.inject_nan_from", "4", "--max-nonfinite",
                                   "3", "--save-every", "2", "--max-steps", "20"),
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "3 non-finite steps in a row at step 4" in res.stderr
    assert "update skipped" in res.stdout + res.stderr
    ck = torch.load(tmp_path / "nan" / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["train_state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_relinking_best_to_the_same_file_leaves_no_temporary(tmp_path):
    """best.pt already names the best step: relinking it is a no-op rename
    (two links to one inode) that used to leave best.pt.tmp.<pid> behind."""
    from training.checkpoint import CheckpointManager
    m = CheckpointManager(str(tmp_path), keep_last=2, keep_best=2, mode="max")
    for step, metric in [(1, 0.5), (2, 0.4), (3, 0.3)]:  # step 1 stays the best
        m.save({"model": {}, "config": {}, "train_state": {"step": step}}, step, metric)
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f], os.listdir(tmp_path)
    assert os.path.samefile(tmp_path / "best.pt", tmp_path / "best_step_00000001.pt")


def test_resume_config_policy():
    import pytest
    from training.config import ConfigError
    from training.state import resume_config
    saved = {"epochs": 2, "lr": 0.1, "workers": 1, "model": {"dim": 8}, "data": {"n": 4}}
    now = {"epochs": 5, "lr": 0.2, "workers": None, "model": {"dim": 8, "new_key": 3},
           "data": {"n": 4}}
    cfg, lines = resume_config(saved, now, cli={"epochs"})
    assert cfg == {"epochs": 5, "lr": 0.1, "workers": None, "model": {"dim": 8, "new_key": 3},
                   "data": {"n": 4}}
    text = "\n".join(lines)
    assert "changes epochs 2 -> 5" in text and "workers" not in text  # unset: chosen again
    assert "differs from the checkpoint in lr (checkpoint 0.1, now 0.2)" in text
    assert "predates take their current values: model.new_key 3" in text
    with pytest.raises(ConfigError, match=r"fixes lr \(checkpoint 0.1, now 0.2\)"):
        resume_config(saved, now, cli={"lr"})


def test_sampler_orders_data_by_global_batch_on_any_number_of_ranks():
    import pytest
    from training.data import ResumableDistributedSampler
    data = list(range(100))  # 3 global batches of 32; the last 4 items are dropped

    def steps(world, per_rank, start=0):
        shares = []
        for r in range(world):
            s = ResumableDistributedSampler(data, world, r, seed=3, batch_size=per_rank)
            s.set_epoch(2, start_step=start)
            assert len(s) == (3 - start) * per_rank
            idx = list(s)
            shares.append([idx[i:i + per_rank] for i in range(0, len(idx), per_rank)])
        return [sum((shares[r][k] for r in range(world)), []) for k in range(3 - start)]

    one = steps(1, 32)
    assert steps(2, 16) == steps(4, 8) == one
    assert sorted(sum(one, [])) != list(range(96))  # shuffled, and 4 items left out
    assert steps(2, 16, start=1) == one[1:]  # resumed at step 1 of the epoch
    s = ResumableDistributedSampler(data, 2, 0, seed=3, batch_size=16)
    s.load_state_dict(ResumableDistributedSampler(data, 1, 0, seed=3, batch_size=32).state_dict())
    with pytest.raises(ValueError, match="global batch is 16 items a step, this run's is 32"):
        s.load_state_dict(ResumableDistributedSampler(data, 1, 0, seed=3, batch_size=16)
                          .state_dict())
