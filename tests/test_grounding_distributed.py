"""GroundingLoss on 2 gloo ranks (every flag pair the loop accepts; shards of
equal and of different entity/object counts) gives the
single-process loss and gradients on the global batch; the checks run in
tests/dist_grounding_worker.py, this test launches it and reads its output."""
import os
import subprocess
import sys

import pytest

from losses.grounding_loss import GroundingLoss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "dist_grounding_worker.py")


def test_grounding_loss_on_two_ranks_equals_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"worker failed (rc {proc.returncode}):\n{output}"
    assert output.count(" OK") == 6 * 2, output  # every case, equal and ragged shapes, on both ranks


def test_local_loss_without_gather_with_grad_is_refused():
    with pytest.raises(ValueError, match="gather-with-grad"):
        GroundingLoss(local_loss=True, gather_with_grad=False, rank=0, world_size=2)
