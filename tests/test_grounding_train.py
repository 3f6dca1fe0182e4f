"""A short training run through the family contract beats chance, and the
evaluation writes its figures; the real loop trains at batch size 2."""
import math
import os

import torch

import families.grounding as fam
import train_stage1
from tests.conftest import train_steps
from training.checkpoint import load_checkpoint
from training.config import load_config

# A model and data small enough for a few loop steps in seconds.
TINY = ["--data.num_train", "8", "--data.num_val", "2", "--data.num_test", "2",
        "--data.gen_image_size", "64", "--data.image_size", "32",
        "--model.vision_width", "32", "--model.vision_depth", "1", "--model.vision_heads", "2",
        "--model.embed_dim", "32", "--model.crop_size", "16", "--model.text.max_length", "32",
        "--workers", "0", "--threads", "1", "--val-every", "0", "--log-every", "1",
        "--eval.num_heatmaps", "1", "--eval.num_matrix", "2"]


def test_short_training_beats_chance_and_writes_figures(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(["--family", "grounding", "--data.root", str(tmp_path / "data"),
                       "--data.num_train", "24", "--data.num_val", "4", "--data.num_test", "4",
                       "--data.gen_image_size", "64", "--data.image_size", "32",
                       "--model.vision_width", "32", "--model.vision_depth", "1", "--model.vision_heads", "2",
                       "--model.embed_dim", "32", "--model.text.max_length", "32", "--epochs", "1",
                       "--eval.num_heatmaps", "2", "--eval.num_matrix", "4"])
    fam.prepare_data(cfg)
    ds = fam.build_datasets(cfg)
    model, crit = fam.build_model(cfg), fam.build_criterion(cfg)
    train = ds["train"]
    before = fam.evaluate(model, crit, train.__class__(train.root, "train", image_size=32), cfg, "cpu")
    train_steps(fam, model, crit, train, steps=60, batch_size=12)
    # evaluated on the training images (what a short run can learn): the pipeline learns
    plain = train.__class__(train.root, "train", image_size=32)
    after = fam.evaluate(model, crit, plain, cfg, "cpu", out_dir=str(tmp_path / "figs"))
    assert after["gallery_size"] == 24 and after["num_captions"] == 72
    assert after["entity_object_acc"] > after["entity_object_chance"] + 0.15
    assert after["entity_object_acc"] > before["entity_object_acc"] + 0.1
    assert after["t2i_R@1"] > 3 / 24
    for name in ("similarity_matrix.png", "entity_heatmaps.png"):
        assert os.path.getsize(tmp_path / "figs" / name) > 1000


def test_the_loop_trains_at_batch_size_2_with_finite_gradients(tmp_path):
    """--batch-size 2 < hard_negative_k + 1: the hard-negative tail is padding.
    --max-nonfinite 1 turns any non-finite loss or gradient into an error."""
    run = train_stage1.main(["--family", "grounding", "--data.root", str(tmp_path / "data"),
                             "--logs", str(tmp_path / "logs"), "--name", "bs2", "--batch-size", "2",
                             "--loss.hard_negative_k", "3", "--max-steps", "3", "--max-nonfinite", "1",
                             "--lr", "1e-2", "--warmup", "0", *TINY])
    assert os.path.exists(os.path.join(run, "checkpoints", "step_00000003.pt"))  # 3 steps taken
    ckpt = load_checkpoint(os.path.join(run, "checkpoints", "latest.pt"))
    # the hard-negative temperature learnt (it got finite, non-zero gradients)
    hard = ckpt["criterion"]["hard_logit_scale"].item()
    assert math.isfinite(hard) and abs(hard - math.log(1 / 0.07)) > 1e-4
