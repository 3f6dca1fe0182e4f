"""A 2-process run (torchrun, gloo) ends with the same weights as a
1-process run with the doubled batch, with and without accumulation."""
import os
import subprocess
import sys

import torch

from tests.conftest import ROOT, TINY_YAML

COMMON = ["--config", TINY_YAML, "--val-every", "0", "--max-steps", "6", "--save-every", "0",
          "--model.dropout", "0.0", "--data.duplicates", "3"]


def _run(tmp_path, name, nproc, *extra):
    script = os.path.join(ROOT, "train_stage1.py")
    if nproc == 1:
        cmd = [sys.executable, script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", script, "--"]  # '--': torchrun would take --logs
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd + COMMON + ["--logs", str(tmp_path), "--name", name, *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ck = torch.load(tmp_path / name / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["train_state"]["step"] == 6
    return ck


def _assert_same(a, b):
    for part in ("model", "criterion"):
        for k in a[part]:
            assert torch.allclose(a[part][k], b[part][k], atol=1e-5, rtol=1e-4), (part, k)


def test_two_ranks_match_one_rank_with_doubled_batch(tmp_path):
    one = _run(tmp_path, "one", 1, "--batch-size", "32")
    two = _run(tmp_path, "two", 2, "--batch-size", "16")
    _assert_same(one, two)
    assert two["world_size"] == 2
    # gather_with_grad + local_loss, and accumulation with no_sync on all but the last micro-step
    two_local = _run(tmp_path, "two_local", 2, "--batch-size", "16", "--local-loss",
                     "--gather-with-grad", "--accum-freq", "2")
    _assert_same(one, two_local)
