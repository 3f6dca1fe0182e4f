"""Plain helpers for the training scripts: config, distributed set-up,
precision, checkpoints, accumulation, logging, retrieval metrics."""
