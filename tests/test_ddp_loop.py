"""Multi-process runs (torchrun, gloo): 2 ranks end with the weights of 1 rank
with the doubled batch; a run continues on another number of ranks with the
same global batch and ends with the weights of the run that never changed;
under fp16 every rank takes the same branch when one rank's loss is NaN."""
import os
import subprocess
import sys

import pytest
import torch

import train_stage1
from tests.conftest import ROOT, TINY_YAML
from training.config import ConfigError

COMMON = ["--config", TINY_YAML, "--val-every", "0", "--save-every", "0",
          "--model.dropout", "0.0", "--data.duplicates", "3"]


def _run(tmp_path, name, nproc, *extra, steps=6, timeout=300, capsys=None):
    """One rank runs in this process (no interpreter start-up), more under torchrun."""
    args = COMMON + ["--max-steps", str(steps), "--logs", str(tmp_path), "--name", name, *extra]
    if nproc == 1:
        train_stage1.main(args)
        out = capsys.readouterr().out if capsys else ""
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", os.path.join(ROOT, "train_stage1.py"), "--"]
        # '--': torchrun would take --logs
        env = dict(os.environ, OMP_NUM_THREADS="1")
        res = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True,
                             timeout=timeout, env=env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        out = res.stdout
    ck = torch.load(tmp_path / name / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["train_state"]["step"] == steps
    return ck, out


def _assert_same(a, b):
    for part in ("model", "criterion"):
        for k in a[part]:
            assert torch.allclose(a[part][k], b[part][k], atol=1e-5, rtol=1e-4), (part, k)


def test_two_ranks_match_one_rank_with_doubled_batch(tmp_path, one_torch_thread):
    """gather_with_grad + local_loss, and accumulation with no_sync on all but the
    last micro-step (plain 2 x 16 against 1 x 32 is in the test below)."""
    one, _ = _run(tmp_path, "one", 1, "--batch-size", "32")
    two_local, _ = _run(tmp_path, "two_local", 2, "--batch-size", "16", "--local-loss",
                        "--gather-with-grad", "--accum-freq", "2")
    _assert_same(one, two_local)
    assert two_local["world_size"] == 2


def test_resume_on_another_number_of_ranks(tmp_path, capsys, one_torch_thread):
    """2 ranks x 16 -> 1 rank x 32 with --accum-freq 2, and the reverse, halfway
    through an epoch (8 steps of 16), with dropout on: micro-batches of the same
    size draw the same masks, so the weights match the unchanged runs."""
    drop = ["--model.dropout", "0.1", "--save-every", "4", "--keep-last", "5"]
    two, _ = _run(tmp_path, "two", 2, "--batch-size", "16", *drop, steps=8)
    one, _ = _run(tmp_path, "one", 1, "--batch-size", "32", "--accum-freq", "2", *drop, steps=8)
    _assert_same(two, one)  # the two runs that never changed agree
    half_two = str(tmp_path / "two" / "checkpoints" / "step_00000004.pt")
    half_one = str(tmp_path / "one" / "checkpoints" / "step_00000004.pt")
    to_one, out = _run(tmp_path, "two_then_one", 1, "--batch-size", "32", "--accum-freq", "2",
                       *drop, "--resume", half_two, steps=8, capsys=capsys)
    assert "resume: the command line changes" in out and "batch_size 16 -> 32" in out
    _assert_same(two, to_one)
    to_two, _ = _run(tmp_path, "one_then_two", 2, "--batch-size", "16", *drop,
                     "--resume", half_one, steps=8)
    _assert_same(one, to_two)
    # another global batch is refused by name
    with pytest.raises(ConfigError, match="global batch is 32"):
        _run(tmp_path, "bad", 1, "--batch-size", "16", *drop, "--resume", half_two, steps=8)


def test_fp16_nonfinite_loss_on_one_rank_skips_on_every_rank(tmp_path):
    """fp16 autocast + GradScaler on CPU; rank 1's loss is NaN at its 3rd step.
    Both ranks must skip that step (a rank that stepped would run one
    collective more than the other and hang or end with other weights)."""
    ck, out = _run(tmp_path, "fp16", 2, "--batch-size", "16", "--precision", "amp",
                   "--loss.inject_nan_from", "2", "--loss.inject_nan_count", "1",
                   "--loss.inject_nan_rank", "1", timeout=120)
    assert ck["train_state"]["nonfinite_total"] == 1
    assert ck["scaler"]["scale"] < 2.0 ** 16  # the scaler saw the overflow and backed off
    assert "update skipped" in out
