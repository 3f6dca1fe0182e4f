"""TensorBoard scalars/images, results.jsonl and peak-memory readings."""
import json
import os
import resource
import time

import torch


class RunLogger:
    def __init__(self, run_dir, enabled=True):
        self.enabled = enabled
        self.writer = None
        self.results_path = os.path.join(run_dir, "results.jsonl")
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def scalars(self, values, step):
        if not self.enabled:
            return
        for k, v in values.items():
            if v is not None:
                self.writer.add_scalar(k, float(v), step)

    def result(self, record):
        if not self.enabled:
            return
        record = dict(record, time=time.time())
        with open(self.results_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def flush(self):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def to_float(v):
    return float(v.detach().float().item()) if torch.is_tensor(v) else float(v)


def emit_figure(fig, name, out_dir=None, writer=None, step=0, tag=None, dpi=100, **savefig_kw):
    """Save a matplotlib figure as ``out_dir/name.png`` and/or log it to
    TensorBoard under ``tag`` (default ``name``), then close it."""
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        fig.savefig(os.path.join(out_dir, f"{name}.png"), dpi=dpi, **savefig_kw)
    if writer is not None:
        writer.add_figure(tag or name, fig, step)
    import matplotlib.pyplot as plt
    plt.close(fig)
