"""TimesCLIP through the real loop (train_stage1.main): accumulation is exact
for both chart paths (trained, and frozen behind the host-keyed cache)."""
import pytest
import torch

import train_stage1
from models.timesclip.encoders import VisionEncoder
from tests.test_timesclip_stage2 import TINY


@pytest.mark.parametrize("freeze", ["false", "true"])
def test_accum_freq_2_ends_with_the_weights_of_accum_freq_1(tmp_path, one_torch_thread, freeze,
                                                            monkeypatch):
    """3 steps of global batch 8 as 2 micro-batches of 4 give the weights of
    3 steps of 8 at once (dropout off): the sample-level alignment sees the
    whole batch's negatives either way. The collate's host keys reach the
    chart view through the loop."""
    given, forward = [], VisionEncoder.forward

    def recording_forward(self, x, keys=None):
        given.append(keys is not None and len(keys) == len(x))
        return forward(self, x, keys)

    monkeypatch.setattr(VisionEncoder, "forward", recording_forward)
    args = ["--family", "timesclip", "--data.root", str(tmp_path / "data"), *TINY,
            "--model.dropout", "0.0", "--model.vision.freeze", freeze, "--precision", "fp32",
            "--batch-size", "8", "--max-steps", "3", "--val-every", "0", "--save-every", "0",
            "--logs", str(tmp_path / "logs")]
    ck = {}
    for k in (1, 2):
        train_stage1.main(args + ["--name", f"accum{k}", "--accum-freq", str(k)])
        ck[k] = torch.load(tmp_path / "logs" / f"accum{k}" / "checkpoints" / "latest.pt",
                           weights_only=False)
        assert ck[k]["train_state"]["step"] == 3
    for part in ("model", "criterion"):
        for name, w in ck[1][part].items():
            torch.testing.assert_close(ck[2][part][name], w, atol=1e-5, rtol=1e-4, msg=f"{part}.{name}")
    assert given and all(given)
