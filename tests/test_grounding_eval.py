"""Grounding evaluation: entity -> object accuracy against a hand computation,
and the encoders run under the run's precision."""
import pytest
import torch

import families.grounding as fam
from families.grounding.evaluation import entity_object_accuracy
from training.config import load_config


def _constructed_case():
    """Image 0: boxes 1 and 2 overlap (IoU 81/100), box 0 apart. Image 1: two
    boxes apart. Object features are one-hot, so an entity's feature names
    the box it picks."""
    e = torch.eye(3)
    boxes = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [21, 21, 30, 30]]),
             torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])]
    obj = torch.stack([e, torch.stack([e[0], e[1], torch.zeros(3)])])      # [2 images, 3 slots, D=3]
    ent = torch.stack([torch.stack([e[1], e[0]]),   # caption 0 (image 0): picks box 1, picks box 0
                       torch.stack([e[1], e[1]]),   # caption 1 (image 1): picks box 1 twice
                       torch.zeros(2, 3)])          # caption 2 (image 0): no boxed phrase
    ok = torch.tensor([[True, True], [False, True], [False, False]])  # caption 1's first phrase truncated
    golds = [[[2], [1]], [[1], [1]], []]
    t2i = torch.tensor([0, 1, 0])
    return ent, ok, golds, t2i, obj, boxes


def test_entity_object_accuracy_by_hand():
    case = _constructed_case()
    # IoU >= 0.5: caption 0 phrase 0 picks box 1 for gold box 2 (IoU 0.81): right;
    # phrase 1 picks box 0 for gold 1: wrong; caption 1: phrase 0 has no
    # feature (a miss although its pick would be right), phrase 1 right.
    # Chance: 2 of 3 candidates count for both phrases of image 0, 1 of 2 on image 1.
    m = entity_object_accuracy(*case, iou_threshold=0.5)
    assert m["num_entities"] == 4
    assert m["entity_object_acc"] == pytest.approx(2 / 4)
    assert m["entity_object_chance"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2 + 1 / 2) / 4)
    # IoU >= 0.9: box 1 no longer counts for gold box 2
    m = entity_object_accuracy(*case, iou_threshold=0.9)
    assert m["entity_object_acc"] == pytest.approx(1 / 4)
    assert m["entity_object_chance"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 2 + 1 / 2) / 4)


def test_evaluation_encodes_under_the_runs_precision(tmp_path):
    cfg = load_config(["--family", "grounding", "--data.root", str(tmp_path / "data"), "--precision", "amp_bf16",
                       "--data.num_train", "2", "--data.num_val", "1", "--data.num_test", "3",
                       "--data.gen_image_size", "32", "--data.image_size", "32",
                       "--model.vision_width", "32", "--model.vision_depth", "1", "--model.vision_heads", "2",
                       "--model.embed_dim", "32", "--model.crop_size", "16", "--model.text.max_length", "32",
                       "--model.cross_attention", "true", "--eval.num_heatmaps", "1", "--eval.num_matrix", "2"])
    fam.prepare_data(cfg)
    torch.manual_seed(0)
    model, crit = fam.build_model(cfg).train(), fam.build_criterion(cfg)
    seen = {}
    for name in ("image_proj", "object_proj", "entity_proj"):
        getattr(model, name).register_forward_hook(
            lambda mod, inp, out, name=name: seen.setdefault(name, set()).add(out.dtype))
    metrics = fam.evaluate(model, crit, fam.build_datasets(cfg)["test"], cfg, "cpu", out_dir=str(tmp_path / "figs"))
    assert seen == {k: {torch.bfloat16} for k in ("image_proj", "object_proj", "entity_proj")}
    assert model.training and model.visual.training          # train mode restored
    assert metrics["gallery_size"] == 3 and 0 <= metrics["entity_object_acc"] <= 1
