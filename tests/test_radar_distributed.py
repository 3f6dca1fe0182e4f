"""RadarContrastiveLoss on 2 gloo ranks (every flag pair the loop accepts,
CLIP and SigLIP) gives the single-process loss and gradients on the global
batch; the checks run in tests/dist_radar_worker.py, this test launches it
and reads its output."""
import os

import pytest

from losses.radar_loss import RadarContrastiveLoss
from tests.dist_check import REPO, run_workers


def test_radar_loss_on_two_ranks_equals_one(tmp_path):
    rc, output = run_workers(os.path.join(REPO, "tests", "dist_radar_worker.py"), 2, tmp_path)
    assert rc == 0, f"worker failed (rc {rc}):\n{output}"
    assert output.count(" OK") == 4 * 2, output  # every case ran on both ranks


def test_local_loss_without_gather_with_grad_is_refused():
    with pytest.raises(ValueError, match="gather-with-grad"):
        RadarContrastiveLoss(8, local_loss=True, gather_with_grad=False, rank=0, world_size=2)
