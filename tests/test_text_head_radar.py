"""The text side through a radar run: train_stage1 with the head, token
dropout and the last MiniLM layer on the prefix disk cache; the trained head
and last layer are in the checkpoint, the frozen layers did not move, and
the checkpoint's config rebuilds the model it was saved from."""
import os

import torch

import families.radar as fam
import train_stage1
from training.checkpoint import load_checkpoint
from tests.radar_tiny import tiny_args


def test_radar_trains_with_the_text_side_and_rebuilds_from_its_checkpoint(tmp_path):
    root, logs = tmp_path / "data", tmp_path / "logs"
    args = tiny_args(root, logs) + [
        "--max-steps", "3", "--name", "side", "--lr", "1e-3",
        "--model.text.head_layers", "1", "--model.text.token_dropout", "0.2",
        "--model.text.unfreeze_last_n", "1", "--model.text.disk_cache", "true",
        "--model.text.max_length", "32"]
    train_stage1.main(args)
    files = os.listdir(root / "text_cache")
    assert files == ["minilm_len32_mean_prefix_last1.pt"]
    ckpt = load_checkpoint(str(logs / "side" / "checkpoints" / "latest.pt"))
    cfg = ckpt["config"]
    t = cfg["model"]["text"]
    assert (t["head_layers"], t["token_dropout"], t["unfreeze_last_n"]) == (1, 0.2, 1)
    state = ckpt["model"]
    assert state["text_encoder.head.out.weight"].abs().sum() > 0        # the head trained
    model = fam.build_model(cfg)
    start = model.state_dict()    # the pretrained MiniLM + a new (identity) head
    for k in ("backbone.encoder.layer.0.attention.self.query.weight",
              "backbone.embeddings.word_embeddings.weight"):
        assert torch.equal(state[f"text_encoder.{k}"], start[f"text_encoder.{k}"]), k
    last = "text_encoder.backbone.encoder.layer.5.output.dense.weight"
    assert not torch.equal(state[last], start[last])                    # the last layer trained
    model.load_state_dict(state)   # strict: every head / layer key matches
    model.eval()
    with torch.no_grad():
        a = model.encode_text(["a person walks then jumps"])["text_features"]
        b = model.encode_text(["a person jumps then walks"])["text_features"]
    assert torch.isfinite(a).all() and not torch.equal(a, b)
