"""Autocast and GradScaler for --precision auto | fp32 | amp (fp16) | amp_bf16.

``auto`` (the default) takes what the device runs natively: bf16 autocast on a
CUDA GPU with bf16 (Ampere and newer) and on a CPU with AVX-512-BF16 or AMX;
fp16 + GradScaler on a CUDA GPU without bf16; fp32 otherwise. On a CPU without
native bf16, autocast emulates it and runs 4-6x slower than fp32, so ``auto``
never picks it there. An explicit ``--precision`` always wins.

The ``attention`` key picks the attention kernel with it (``resolve_attention``).
"""
import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from training.config import ConfigError

PRECISIONS = ("fp32", "amp", "amp_bf16")

# /proc/cpuinfo flags of the x86 instructions that make bf16 matmuls native.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU feature flags the kernel reports (empty where there is no cpuinfo)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_native_bf16(flags=None):
    flags = cpu_flags() if flags is None else set(flags)
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


def resolve_precision(requested, device, cuda_bf16=None, flags=None):
    """``(precision, reason)`` for the run. ``requested`` other than ``auto`` is
    returned as it is. ``cuda_bf16`` and ``flags`` override the capability
    queries (tests simulate other machines with them)."""
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ConfigError(f"precision must be auto or one of {PRECISIONS}, got {requested!r}")
        return requested, "set explicitly"
    device = torch.device(device)
    if device.type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if cuda_bf16:
            return "amp_bf16", "auto: this CUDA device runs bf16 natively"
        return "amp", "auto: this CUDA device has no native bf16; fp16 autocast + GradScaler"
    if device.type == "cpu":
        flag = cpu_native_bf16(flags)
        if flag:
            return "amp_bf16", f"auto: this CPU runs bf16 natively ({flag})"
        return "fp32", ("auto: this CPU has no native bf16 (no AVX-512-BF16 or AMX); "
                        "emulated bf16 autocast would be several times slower")
    return "fp32", f"auto: fp32 on {device.type}"


ATTENTION_KERNELS = ("auto", "default", "math")


def resolve_attention(requested, precision, device):
    """``(kernel, reason)``: which scaled-dot-product attention kernel the
    forward passes use (config key ``attention``). ``default`` is PyTorch's own
    choice (on CPU its fused flash kernel); ``math`` its reference kernel made of
    matmuls and a softmax. ``auto`` takes ``math`` under bf16 autocast on CPU,
    where the fused kernel's backward is slow (benchmarks/bench_precision.py
    --attention: 0.74-0.80x the radar step), and ``default`` everywhere else."""
    if requested not in ATTENTION_KERNELS:
        raise ConfigError(f"attention must be one of {ATTENTION_KERNELS}, got {requested!r}")
    if requested != "auto":
        return requested, "set explicitly"
    if torch.device(device).type == "cpu" and precision == "amp_bf16":
        return "math", ("auto: bf16 autocast on CPU, where the fused attention kernel's "
                        "backward is slow")
    return "default", "auto: PyTorch's own choice"


def autocast(precision, device, attention="auto"):
    """A zero-argument factory of the autocast context for ``precision``
    (already resolved: never ``auto``), with the attention kernel of
    ``resolve_attention(attention, ...)``. fp16 autocast also runs on CPU, so
    the GradScaler path can be tested without a GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (resolve 'auto' first), "
                         f"got {precision!r}")
    device = torch.device(device)
    kernel, _ = resolve_attention(attention, precision, device)
    if precision == "fp32":
        cast = contextlib.nullcontext
    else:
        dtype = torch.float16 if precision == "amp" else torch.bfloat16
        cast = lambda: torch.autocast(device_type=device.type, dtype=dtype)  # noqa: E731
    if kernel == "default":
        return cast
    # the kernel chosen in the forward also runs the backward (autograd records it)
    return lambda: _both(cast(), sdpa_kernel([SDPBackend.MATH]))


@contextlib.contextmanager
def _both(first, second):
    with first, second:
        yield


def grad_scaler(precision, device):
    # A disabled scaler is a no-op, so the loop has one code path.
    return torch.amp.GradScaler(device.type, enabled=precision == "amp")
