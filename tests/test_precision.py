"""precision: auto and the thread budget, on simulated machines."""
import contextlib

import pytest
import torch

from training.precision import autocast, cpu_flags, grad_scaler, resolve_attention, resolve_precision
from training.resources import apply_thread_budget, available_cores, thread_budget

AVX2_ONLY = {"fpu", "sse2", "avx", "avx2", "fma"}            # the AMD EPYC of issue 12
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16"}


def test_auto_is_fp32_on_a_cpu_without_native_bf16():
    prec, why = resolve_precision("auto", "cpu", flags=AVX2_ONLY)
    assert prec == "fp32" and "no native bf16" in why


@pytest.mark.parametrize("flags,flag", [(AVX512_BF16, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx_bf16")])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(flags, flag):
    prec, why = resolve_precision("auto", "cpu", flags=flags)
    assert prec == "amp_bf16" and flag in why


def test_auto_on_cuda_follows_bf16_support():
    assert resolve_precision("auto", "cuda", cuda_bf16=True)[0] == "amp_bf16"
    assert resolve_precision("auto", "cuda", cuda_bf16=False)[0] == "amp"


@pytest.mark.parametrize("explicit", ["fp32", "amp", "amp_bf16"])
@pytest.mark.parametrize("flags", [AVX2_ONLY, AVX512_BF16])
def test_an_explicit_choice_always_wins(explicit, flags):
    assert resolve_precision(explicit, "cpu", flags=flags) == (explicit, "set explicitly")
    assert resolve_precision(explicit, "cuda", cuda_bf16=False)[0] == explicit


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="resolve 'auto'"):
        autocast("auto", torch.device("cpu"))


def test_cpuinfo_flags_are_read(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(str(p)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_fp16_autocast_and_scaler_run_on_cpu():
    cpu = torch.device("cpu")
    with autocast("amp", cpu)():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.float16
    assert grad_scaler("amp", cpu).is_enabled() and not grad_scaler("fp32", cpu).is_enabled()
    assert autocast("fp32", cpu) is contextlib.nullcontext


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 64])
@pytest.mark.parametrize("local_ranks", [1, 2, 4])
def test_thread_budget_never_exceeds_the_cores(cores, local_ranks):
    plan = thread_budget(cores=cores, local_ranks=local_ranks, env={})
    per_rank = max(1, cores // local_ranks)
    assert plan["threads"] >= 1
    assert plan["threads"] + plan["workers"] <= per_rank or per_rank == 1 and plan["workers"] == 0
    assert plan["gen_workers"] <= per_rank
    # every rank of the node together stays inside the machine
    assert local_ranks * (plan["threads"] + plan["workers"]) <= max(cores, local_ranks)


def test_thread_budget_two_cores_and_user_settings():
    assert thread_budget(cores=2, local_ranks=1, env={}) | {"reason": ""} == \
        {"threads": 2, "workers": 0, "gen_workers": 2, "cores": 2, "per_rank": 2, "reason": ""}
    assert thread_budget(workers=1, cores=2, local_ranks=1, env={})["threads"] == 1
    assert thread_budget(cores=4, local_ranks=1, env={}) | {"reason": ""} == \
        {"threads": 3, "workers": 1, "gen_workers": 4, "cores": 4, "per_rank": 4, "reason": ""}
    plan = thread_budget(cores=2, local_ranks=1, env={"OMP_NUM_THREADS": "1"})
    assert plan["threads"] == 1 and "OMP_NUM_THREADS" in plan["reason"]
    assert thread_budget(threads=6, workers=3, cores=2, local_ranks=1, env={})["threads"] == 6


def test_apply_thread_budget_follows_the_affinity_mask(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        cfg = {"threads": None, "workers": "auto", "data": {"gen_workers": None}}
        line = apply_thread_budget(cfg)
        assert available_cores() == 1
        assert (cfg["threads"], cfg["workers"], cfg["data"]["gen_workers"]) == (1, 0, 1)
        assert torch.get_num_threads() == 1 and "1 cores available" in line
    finally:
        torch.set_num_threads(before)


def test_attention_auto_is_math_only_under_cpu_bf16():
    assert resolve_attention("auto", "amp_bf16", "cpu")[0] == "math"
    for precision in ("fp32", "amp"):
        assert resolve_attention("auto", precision, "cpu")[0] == "default"
    for precision in ("amp_bf16", "amp", "fp32"):
        assert resolve_attention("auto", precision, "cuda")[0] == "default"
    for explicit in ("default", "math"):
        assert resolve_attention(explicit, "amp_bf16", "cpu") == (explicit, "set explicitly")
    with pytest.raises(ValueError, match="attention"):
        resolve_attention("flash", "fp32", "cpu")


def _sdpa_step(precision, attention):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False   # padded keys, as a text batch has
    with autocast(precision, torch.device("cpu"), attention)():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.float().square().sum().backward()
    return out.float(), [t.grad for t in (q, k, v)]


def test_attention_kernels_agree_and_math_is_the_one_run(monkeypatch):
    # fp32: the math kernel and PyTorch's default give the same outputs and gradients
    (a, ga), (b, gb) = _sdpa_step("fp32", "default"), _sdpa_step("fp32", "math")
    assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(ga, gb))
    # and "math" is really the kernel in force inside the context (the fused
    # flash kernel disabled), also with bf16 autocast
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(torch.backends.cuda.flash_sdp_enabled())
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    c, _ = _sdpa_step("amp_bf16", "math")
    _sdpa_step("amp_bf16", "default")
    assert seen == [False, True]
    assert (c - a).abs().max() < 0.05   # bf16 of the same numbers


@pytest.mark.parametrize("flag", [["--attention", "flash"], ["--precision", "bf16"]])
def test_a_bad_precision_or_attention_flag_is_a_one_line_error(tmp_path, flag):
    """The command line's exit: 'error: ...' naming the key, exit code 2, no traceback
    (before any data is generated: the run stops at its first lines)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "train_stage1.py"), "--family", "radar", *flag,
                        "--logs", str(tmp_path / "logs"), "--data.root", str(tmp_path / "data")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith(f"error: {flag[0][2:]} must be") and "Traceback" not in r.stderr
    assert not (tmp_path / "data").exists()
