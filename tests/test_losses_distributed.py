"""ClipLoss (every supported flag pair, with and without multi-positive ids)
and SigLipLoss, and a loss written with gather_for_loss (both modes),
under torchrun with gloo on CPU give the single-process
global-batch loss and gradients (fp32, atol 1e-5). The checks themselves
run in tests/dist_losses_worker.py; this test launches it and reads the
return code. 2 processes is the case asked for; 3 also exercises SigLIP's
bidirectional ring step (with 2 ranks only the one-way step runs)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "dist_losses_worker.py")


@pytest.mark.parametrize("nproc", [2, 3])
def test_distributed_losses_match_single_process(nproc, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", WORKER]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"worker failed (rc {proc.returncode}):\n{output}"
    # The worker must actually have run every case on every rank.
    assert output.count(" OK") == 9 * nproc, output
