"""Autocast and GradScaler for --precision fp32 | amp (fp16) | amp_bf16."""
import contextlib

import torch

PRECISIONS = ("fp32", "amp", "amp_bf16")


def autocast(precision, device):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.float16 if precision == "amp" else torch.bfloat16
    if precision == "amp" and device.type == "cpu":
        raise ValueError("--precision amp (fp16 + GradScaler) needs CUDA; use amp_bf16 on CPU")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision, device):
    # A disabled scaler is a no-op, so the loop has one code path.
    return torch.amp.GradScaler(device.type, enabled=precision == "amp")
