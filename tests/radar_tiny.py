"""A tiny radar run for the family's tests: a few simulated clips, a
one-layer 32-d radar encoder, fp32, one process, no workers."""
from training.config import load_config


def tiny_args(root, logs=None):
    args = ["--family", "radar", "--data.root", str(root), "--data.num_train", "8",
            "--data.num_val", "4", "--data.num_test", "6", "--data.seed", "1",
            "--data.gen_workers", "1", "--data.max_motion_length", "224",
            "--model.embed_dim", "32", "--model.num_layers", "1", "--model.num_heads", "2",
            "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--eval.batch_size", "4"]
    return args + (["--logs", str(logs)] if logs is not None else [])


def tiny_cfg(root, *extra):
    return load_config(tiny_args(root) + list(extra))
