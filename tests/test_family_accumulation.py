"""Grounding through the real loop (train_stage1.main): 3 steps of global
batch 4 as 2 micro-batches of 2 end with the weights of 3 steps of 4 at once
(the other families' versions live in their own test files)."""
import torch

import train_stage1

TINY = ["--data.num_train", "12", "--data.num_val", "2", "--data.num_test", "2",
        "--data.gen_image_size", "64", "--data.image_size", "32",
        "--model.vision_width", "32", "--model.vision_depth", "1", "--model.vision_heads", "2",
        "--model.embed_dim", "32", "--model.crop_size", "16", "--model.text.max_length", "32",
        "--workers", "0", "--precision", "fp32", "--val-every", "0", "--save-every", "0"]


def test_grounding_accum_freq_2_ends_with_the_weights_of_accum_freq_1(tmp_path, one_torch_thread):
    args = ["--family", "grounding", "--data.root", str(tmp_path / "data"), *TINY,
            "--batch-size", "4", "--max-steps", "3", "--logs", str(tmp_path / "logs")]
    ck = {}
    for k in (1, 2):
        train_stage1.main(args + ["--name", f"accum{k}", "--accum-freq", str(k)])
        ck[k] = torch.load(tmp_path / "logs" / f"accum{k}" / "checkpoints" / "latest.pt",
                           weights_only=False)
        assert ck[k]["train_state"]["step"] == 3
    for part in ("model", "criterion"):
        for name, w in ck[1][part].items():
            torch.testing.assert_close(ck[2][part][name], w, atol=1e-5, rtol=1e-4,
                                       msg=f"{part}.{name}")
    # the steps trained: the coarse temperature moved
    assert abs(float(ck[1]["criterion"]["logit_scale"]) - float(torch.log(torch.tensor(1 / 0.07)))) > 1e-5
