"""Radar end to end on a tiny run: train_stage1 -> eval.py writes metrics.json;
stage 2 (linear probe) trains and reports its test metric."""
import json
import math
import os

import pytest
import torch

import eval as eval_script
import families.radar as fam
import train_stage1
import train_stage2
from data.radar.heldout import heldout_captions
from training.checkpoint import load_checkpoint
from tests.radar_tiny import tiny_args


def _test_clips(root):
    """(captions, number of actions) of every test clip, read from the files."""
    with open(os.path.join(root, "_split", "test.json")) as f:
        split = json.load(f)
    out = []
    for cid in split:
        with open(os.path.join(root, "meta", f"{cid}.json")) as f:
            meta = json.load(f)
        out.append((meta["captions"], len(meta["actions"])))
    return out


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("radar_run")
    root, logs = tmp / "data", tmp / "logs"
    train_stage1.main(tiny_args(root, logs) + ["--max-steps", "2", "--name", "tiny"])
    ckpt = logs / "tiny" / "checkpoints" / "latest.pt"
    assert ckpt.exists()
    return tmp, str(root), str(ckpt)


def test_eval_script_end_to_end(stage1):
    tmp, root, ckpt = stage1
    out = tmp / "eval"
    eval_script.main(["--checkpoint", ckpt, "--out", str(out)])
    with open(out / "metrics.json") as f:
        m = json.load(f)
    clips = _test_clips(root)
    # counts by hand from the test split's files
    assert m["temporal_order_pairs"] == sum(len(c) for c, n in clips if n > 1)
    assert m["zeroshot_clips"] == sum(n == 1 for _, n in clips) > 0
    assert m["t2r_chance_R@10"] == pytest.approx(min(1.0, 10 / len(clips)))
    for k in ("t2r_R@1", "r2t_R@1", "t2r_R@10", "temporal_order_acc", "zeroshot_action_acc"):
        assert 0.0 <= m[k] <= 1.0, k
    assert m["t2r_R@10"] == 1.0                   # 6 clips: every caption's clip is in the top 10
    # the held-out phrasing (data/radar/heldout.py), made from the clips' meta actions and ids
    held = [heldout_captions(json.load(open(os.path.join(root, "meta", f"{cid}.json")))["actions"], cid)
            for cid in json.load(open(os.path.join(root, "_split", "test.json")))]
    assert m["heldout_num_queries"] == sum(len(c) for c, _ in held)
    assert m["heldout_temporal_order_pairs"] == sum(len(s) for _, s in held)
    assert m["heldout_zeroshot_clips"] == m["zeroshot_clips"] and m["heldout_t2r_R@10"] == 1.0
    for k in ("heldout_t2r_R@1", "heldout_r2t_R@1", "heldout_temporal_order_acc", "heldout_zeroshot_action_acc"):
        assert 0.0 <= m[k] <= 1.0, k
    for fig in ("radar_maps", "similarity_matrix", "alignment_1"):
        assert (out / f"{fig}.png").exists()


def test_stage2_linear_trains_the_head_and_reports_test_accuracy(stage1):
    tmp, root, ckpt = stage1
    cfg = load_checkpoint(ckpt)["config"]
    state = load_checkpoint(ckpt)["model"]
    parts = fam.build_stage2(cfg, state, "linear")
    model, encoder = parts["model"], parts["encoder"]
    single = [n == 1 for _, n in _test_clips(root)]
    assert len(parts["datasets"]["test"]) == sum(single)     # single-action clips only
    for k, v in encoder.state_dict().items():                 # the stage-1 encoder's weights
        assert torch.equal(v, state[f"radar_encoder.{k}"]), k

    # the loop's linear mode: encoder frozen, head trained
    for p in encoder.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    batch = parts["collate"]([parts["datasets"]["train"][i] for i in range(len(parts["datasets"]["train"]))])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    encoder.eval()
    losses = []
    for _ in range(15):
        loss, logs = parts["loss_fn"](model(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())

    m = parts["evaluate"](model, parts["datasets"]["test"], cfg, torch.device("cpu"))
    test = parts["collate"]([parts["datasets"]["test"][i] for i in range(len(parts["datasets"]["test"]))])
    model.eval()
    with torch.no_grad():
        logits = model(test)
    assert m["num_clips"] == len(test["label"])
    assert m["action_acc"] == pytest.approx((logits.argmax(-1) == test["label"]).float().mean().item())
    assert m["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, test["label"]).item(),
                                      rel=1e-5)


def test_train_stage2_linear_runs_and_writes_test_metrics(stage1):
    tmp, root, ckpt = stage1
    logs = tmp / "logs2"
    test = train_stage2.main(["--family", "radar", "--init", ckpt, "--mode", "linear",
                              "--stage2.epochs", "1", "--precision", "fp32", "--workers", "0",
                              "--logs", str(logs), "--name", "s2"])
    assert test["num_clips"] == sum(n == 1 for _, n in _test_clips(root))
    assert 0.0 <= test["action_acc"] <= 1.0
    with open(logs / "s2" / "metrics.json") as f:
        assert json.load(f)["action_acc"] == pytest.approx(test["action_acc"])


def _without_key_bias(name, w, embed_dim):
    """Attention's key bias has no gradient (softmax ignores a shift shared by
    every key), so Adam turns its float noise into steps of size lr: left out."""
    return torch.cat([w[:embed_dim], w[2 * embed_dim:]]) if name.endswith("in_proj_bias") else w


def test_accum_freq_2_ends_with_the_weights_of_accum_freq_1(stage1):
    """Through train_stage1.main: 3 steps of global batch 4 as 2 micro-batches of
    2 give the weights of 3 steps of 4 at once (dropout off; every loss term on:
    CLIP, temporal SequenceSimilarity, temporal negatives)."""
    tmp, root, _ = stage1
    logs = tmp / "accum"
    args = tiny_args(root, logs) + ["--model.dropout", "0.0", "--max-steps", "3", "--warmup", "0",
                                    "--val-every", "0", "--save-every", "0"]
    weights = {}
    for k in (1, 2):
        train_stage1.main(args + ["--name", f"accum{k}", "--accum-freq", str(k)])
        weights[k] = load_checkpoint(str(logs / f"accum{k}" / "checkpoints" / "latest.pt"))
        assert weights[k]["train_state"]["step"] == 3
    D = weights[1]["config"]["model"]["embed_dim"]
    for part in ("model", "criterion"):
        for name, w in weights[1][part].items():
            torch.testing.assert_close(_without_key_bias(name, weights[2][part][name], D),
                                       _without_key_bias(name, w, D), atol=1e-5, rtol=1e-4,
                                       msg=f"{part}.{name}")
    # the steps trained: the temperature moved from its initial log(1 / 0.07) by far more than atol
    assert abs(float(weights[1]["criterion"]["logit_scale"]) - math.log(1 / 0.07)) > 5e-4
