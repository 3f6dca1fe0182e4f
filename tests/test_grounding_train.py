"""A short training run through the family contract beats chance, and the
evaluation writes its figures; the real loop trains at batch size 2, and
eval.py on its checkpoint writes metrics checked by hand."""
import json
import math
import os

import pytest
import torch
from PIL import Image

import eval as eval_py

import families.grounding as fam
import train_stage1
from data.cache import MARKER
from tests.conftest import train_steps
from data.grounding.format import write_annotation
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
    cfg = load_config(["--family", "grounding", "--data.root", str(tmp_path / "data"), "--precision", "fp32",
                       "--data.num_train", "24", "--data.num_val", "4", "--data.num_test", "4",
                       "--data.gen_image_size", "64", "--data.image_size", "32",
                       "--model.vision_width", "32", "--model.vision_depth", "1", "--model.vision_heads", "2",
                       "--model.embed_dim", "32", "--model.text.max_length", "32", "--epochs", "1",
                       "--eval.num_heatmaps", "2", "--eval.num_matrix", "4",
                       # the bounds below were measured on the template captions (the diverse
                       # grammar's paraphrases need more than 60 steps: R@1 0.07 at seed 0)
                       "--data.captions", "template"])
    fam.prepare_data(cfg)
    ds = fam.build_datasets(cfg)
    model, crit = fam.build_model(cfg), fam.build_criterion(cfg)
    train = ds["train"]
    before = fam.evaluate(model, crit, train.__class__(train.root, "train", image_size=32), cfg, "cpu")
    torch.manual_seed(0)  # the batches drawn below do not depend on what evaluating drew
    train_steps(fam, model, crit, train, steps=60, batch_size=12)
    # evaluated on the training images (what a short run can learn): the pipeline learns
    plain = train.__class__(train.root, "train", image_size=32)
    after = fam.evaluate(model, crit, plain, cfg, "cpu", out_dir=str(tmp_path / "figs"))
    assert after["gallery_size"] == 24 and after["num_captions"] == 72
    assert after["entity_object_acc"] > after["entity_object_chance"] + 0.15
    assert after["entity_object_acc"] > before["entity_object_acc"] + 0.1
    # chance: R@1 1/24, mean rank 12.5 (seeds 0-4 gave R@1 0.10-0.24, mean rank 5.4-8.4)
    assert after["t2i_R@1"] > 2 / 24 and after["t2i_mean_rank"] < 10
    for name in ("similarity_matrix.png", "entity_heatmaps.png"):
        assert os.path.getsize(tmp_path / "figs" / name) > 1000


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """2 loop steps at --batch-size 2 (< hard_negative_k + 1: the mined
    hard-negative tail is padding); --max-nonfinite 1 turns any non-finite
    loss or gradient into an error."""
    tmp = tmp_path_factory.mktemp("grounding_run")
    return train_stage1.main(["--family", "grounding", "--data.root", str(tmp / "data"),
                              "--logs", str(tmp / "logs"), "--name", "bs2", "--batch-size", "2",
                              "--loss.hard_negative_k", "3", "--max-steps", "2", "--max-nonfinite", "1",
                              "--lr", "1e-2", "--warmup", "0", *TINY])


def test_the_loop_trains_at_batch_size_2_with_finite_gradients(tiny_run):
    assert os.path.exists(os.path.join(tiny_run, "checkpoints", "step_00000002.pt"))  # 2 steps taken
    ckpt = load_checkpoint(os.path.join(tiny_run, "checkpoints", "latest.pt"))
    # the hard-negative temperature learnt (it got finite, non-zero gradients)
    hard = ckpt["criterion"]["hard_logit_scale"].item()
    assert math.isfinite(hard) and abs(hard - math.log(1 / 0.07)) > 1e-4


def _hand_made_split(root):
    """Two 64x64 images in the Flickr30k Entities layout.
    a: one box, named by one phrase: whatever the model predicts is right;
       chance 1.
    c: boxes 0 and 1 overlap (IoU 900/1024 >= 0.5), 2 and 3 elsewhere. Its
       first caption names box 0 after 40 words, beyond the 32 tokens the
       run keeps: no feature, a miss whatever the model does; chance 2/4. Its
       second caption names only a chain without a box: not counted.
    So entity_object_acc = 1/2, entity_object_chance = (1 + 1/2) / 2."""
    for sub in ("flickr30k-images", "Sentences", "Annotations"):
        os.makedirs(os.path.join(root, sub))
    boxes = {"a": [(1, [8, 8, 24, 24])],
             "c": [(2, [0, 0, 32, 32]), (3, [2, 2, 32, 32]), (4, [40, 40, 60, 60]), (5, [40, 0, 60, 20])]}
    captions = {"a": ["[/EN#1/other a red square] ."],
                "c": [" ".join(["word"] * 40) + " [/EN#2/other a blue circle] .", "[/EN#9/other the sky] ."]}
    for image_id, objs in boxes.items():
        Image.new("RGB", (64, 64), (90, 120, 150)).save(os.path.join(root, "flickr30k-images", f"{image_id}.jpg"))
        write_annotation(os.path.join(root, "Annotations", f"{image_id}.xml"), f"{image_id}.jpg", 64, 64, objs)
        with open(os.path.join(root, "Sentences", f"{image_id}.txt"), "w") as f:
            f.write("\n".join(captions[image_id]) + "\n")
    for split in ("train", "val", "test"):
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("a\nc\n")


def test_eval_py_on_a_tiny_checkpoint_writes_hand_checked_metrics(tiny_run, tmp_path):
    _hand_made_split(str(tmp_path / "flickr"))
    out = tmp_path / "eval"
    eval_py.main(["--checkpoint", os.path.join(tiny_run, "checkpoints", "latest.pt"), "--out", str(out),
                  "--device", "cpu", "--data.generate", "false", "--data.root", str(tmp_path / "flickr")])
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["gallery_size"] == 2 and metrics["num_captions"] == 3 and metrics["num_entities"] == 2
    assert metrics["entity_object_acc"] == pytest.approx(0.5)
    assert metrics["entity_object_chance"] == pytest.approx(0.75)
    for k in ("t2i_R@1", "i2t_R@1", "t2i_mAP@10", "i2t_mean_rank"):
        assert k in metrics, k
    for name in ("similarity_matrix.png", "entity_heatmaps.png"):
        assert os.path.getsize(out / name) > 1000
    assert not [k for k in metrics if k.startswith("heldout_")]   # a user's data has no scene objects


def test_eval_py_on_a_checkpoint_from_before_data_captions(tiny_run, tmp_path):
    """A checkpoint whose config has no data.captions (written before issue 13) evaluates on
    template captions, with the held-out keys."""
    ckpt = load_checkpoint(os.path.join(tiny_run, "checkpoints", "latest.pt"))
    del ckpt["config"]["data"]["captions"]
    torch.save(ckpt, tmp_path / "old.pt")
    eval_py.main(["--checkpoint", str(tmp_path / "old.pt"), "--out", str(tmp_path / "eval"), "--device", "cpu",
                  "--data.root", str(tmp_path / "data")])
    with open(tmp_path / "eval" / "metrics.json") as f:
        metrics = json.load(f)
    with open(tmp_path / "data" / MARKER) as f:
        assert json.load(f)["params"]["captions"] == "template"
    assert metrics["heldout_num_captions"] == 3 * metrics["gallery_size"]
    assert "heldout_t2i_R@10" in metrics and "heldout_entity_object_acc" in metrics
