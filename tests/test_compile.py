"""--torchcompile composes with the loop: exact accumulation (dropout replay
included), resume and checkpoints (compiled <-> eager), grad checkpointing,
frozen towers, bf16 autocast; towers called with strings stay eager and their
tensor parts are compiled; every tower is compiled however many there are.
The tests trace with ``aot_eager`` (Dynamo + AOT autograd, no code
generation: inductor takes minutes per real tower on a small CPU); one test
runs inductor on the tiny family."""
import contextlib

import pytest
import torch
import torch._dynamo
import torch.nn as nn
from torch._dynamo.utils import counters
from torch._inductor import cpp_builder
from torch._inductor.exc import InvalidCxxCompiler

import train_stage1
from tests import tiny_family as fam
from tests.conftest import TINY_YAML
from training.accumulation import ModelAndLoss, forward_backward
from training.compile import compile_towers
from training.config import ConfigError
from training.data import cat_batches
from training.state import seed_everything

BACKEND = ["--torchcompile", "--torchcompile-backend", "aot_eager"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


class _NoScaler:
    def scale(self, x):
        return x


def _module(tiny_cfg, dropout, compiled, backend="aot_eager"):
    tiny_cfg["model"]["dropout"] = dropout
    torch.manual_seed(0)
    module = ModelAndLoss(fam.build_model(tiny_cfg), fam.build_criterion(tiny_cfg, 0, 1)).train()
    names = compile_towers(module.model, backend) if compiled else None
    return module, names


def _batch(tiny_cfg, n=32):
    ds = fam.build_datasets(tiny_cfg)["train"]
    return fam.collate([ds[i] for i in range(n)])


def _step(module, batch, k, autocast=contextlib.nullcontext):
    """Loss and gradients of one forward_backward over k micro-batches."""
    n = len(batch["id"])
    micro = [{key: v[i * n // k:(i + 1) * n // k] for key, v in batch.items()} for i in range(k)]
    module.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    loss, _ = forward_backward(module, module, micro, 0, autocast, _NoScaler(),
                               torch.device("cpu"))
    return loss, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _assert_grads(got, ref, atol=1e-6, rtol=1e-5):
    assert set(got) == set(ref)
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=atol, rtol=rtol), name


def test_compiled_accumulation_replays_dropout_exactly(tiny_cfg, one_torch_thread):
    """accum 2, compiled, dropout 0.3: the gradients of one eager graph over the
    batch encoded in the same two chunks from the same RNG state (the no-grad
    and the grad graphs must draw eager's masks: tests/test_accumulation.py's
    reference and tolerance)."""
    eager, _ = _module(tiny_cfg, 0.3, compiled=False)
    batch = _batch(tiny_cfg)
    eager.zero_grad()
    torch.manual_seed(7)
    chunks = [{key: v[i * 16:(i + 1) * 16] for key, v in batch.items()} for i in range(2)]
    ref_loss, _ = eager.criterion(cat_batches([eager.model(c) for c in chunks]), batch, 0)
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in eager.named_parameters() if p.grad is not None}

    module, names = _module(tiny_cfg, 0.3, compiled=True)
    loss, got = _step(module, batch, 2)
    assert names == ["a", "b"]
    assert counters["stats"]["unique_graphs"] >= 2   # traced, not run eagerly
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    _assert_grads(got, ref)


def test_grad_checkpointing_frozen_tower_and_bf16_compiled_equal_eager(tiny_cfg, one_torch_thread):
    batch = _batch(tiny_cfg)
    # grad checkpointing: the tiny model checkpoints its compiled tower a
    grads = {}
    for compiled in (False, True):
        module, _ = _module(tiny_cfg, 0.2, compiled)
        module.model.set_grad_checkpointing(True)
        grads[compiled] = _step(module, batch, 2)
    assert torch.allclose(grads[True][0], grads[False][0], atol=1e-6)
    _assert_grads(grads[True][1], grads[False][1])
    # tower b frozen: no gradient reaches it, a's are eager's
    for compiled in (False, True):
        module, _ = _module(tiny_cfg, 0.2, compiled)
        module.model.b.requires_grad_(False)
        grads[compiled] = _step(module, batch, 2)
    assert not any(n.startswith("model.b.") for n in grads[True][1])
    _assert_grads(grads[True][1], grads[False][1])
    # bf16 autocast: the traced graph runs the ops eager runs, in bf16
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    for compiled in (False, True):
        module, _ = _module(tiny_cfg, 0.0, compiled)
        grads[compiled] = _step(module, batch, 1, bf16)
    assert torch.allclose(grads[True][0], grads[False][0], atol=1e-3)
    _assert_grads(grads[True][1], grads[False][1], atol=1e-3, rtol=1e-2)


def _ckpt(tmp_path, name):
    return torch.load(tmp_path / name / "checkpoints" / "latest.pt", weights_only=False)


def _assert_same(a, b, atol=1e-5):
    for part in ("model", "criterion"):
        assert set(a[part]) == set(b[part]), part
        for k in a[part]:
            assert torch.allclose(a[part][k], b[part][k], atol=atol, rtol=1e-4), (part, k)


def _main(tmp_path, name, *extra, steps=3):
    train_stage1.main(["--config", TINY_YAML, "--logs", str(tmp_path), "--name", name,
                       "--val-every", "0", "--save-every", "0", "--max-steps", str(steps),
                       *extra])
    ck = _ckpt(tmp_path, name)
    assert ck["train_state"]["step"] == steps
    return ck


def test_loop_compiled_accum_2_equals_accum_1_and_eager(tmp_path, capsys, one_torch_thread):
    """Through train_stage1.main, dropout off (accum 1 and 2 then draw nothing):
    3 steps of batch 32 as 2 micro-batches of 16, compiled, end with the weights
    of 3 steps of 32 at once, compiled and eager; the checkpoint keys are eager's."""
    common = ["--model.dropout", "0.0", "--data.duplicates", "3"]
    eager = _main(tmp_path, "eager", *common)
    one = _main(tmp_path, "c1", *common, *BACKEND)
    two = _main(tmp_path, "c2", *common, *BACKEND, "--accum-freq", "2")
    out = capsys.readouterr().out
    assert "torch.compile: compiled a, b; first step" in out
    assert not any("_orig_mod" in k for k in one["model"])
    _assert_same(one, eager)
    _assert_same(two, one)
    seed_everything(one["config"]["seed"])   # the run's initial weights: the steps moved them
    init = fam.build_model(one["config"]).state_dict()
    assert not torch.allclose(one["model"]["a.0.weight"], init["a.0.weight"], atol=1e-3)


def test_resume_compiled_and_eager_checkpoints_load_either_way(tmp_path, one_torch_thread):
    """8 steps with dropout, a checkpoint at step 4: compiled resumed from it
    ends where compiled uninterrupted ends (bit for bit); an eager checkpoint
    resumed compiled and a compiled one resumed eager end where eager ends."""
    common = ["--model.dropout", "0.2", "--save-every", "4", "--keep-last", "3"]
    full_c = _main(tmp_path, "full_c", *common, *BACKEND, steps=8)
    full_e = _main(tmp_path, "full_e", *common, steps=8)
    _assert_same(full_c, full_e, atol=1e-6)
    half = {k: str(tmp_path / k / "checkpoints" / "step_00000004.pt") for k in ("full_c", "full_e")}
    resumed_c = _main(tmp_path, "res_c", *common, *BACKEND, "--resume", half["full_c"], steps=8)
    for part in ("model", "criterion"):
        for k in full_c[part]:
            assert torch.equal(resumed_c[part][k], full_c[part][k]), (part, k)
    for sa, sb in zip(full_c["optimizer"]["state"].values(), resumed_c["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    e_then_c = _main(tmp_path, "e_then_c", *common, *BACKEND, "--resume", half["full_e"], steps=8)
    c_then_e = _main(tmp_path, "c_then_e", *common, "--torchcompile", "false",
                     "--resume", half["full_c"], steps=8)
    _assert_same(e_then_c, full_e, atol=1e-6)
    _assert_same(c_then_e, full_e, atol=1e-6)
    assert c_then_e["config"]["torchcompile"] is False


class _Tokenizing(nn.Module):
    """A text tower as the families have them: captions (strings) in, tokenized
    in Python, then tensor parts."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(128, 8)
        self.proj = nn.Linear(8, 4)

    def forward(self, captions):
        ids = torch.tensor([[ord(ch) % 128 for ch in c.ljust(6)[:6]] for c in captions])
        return self.proj(self.embed(ids).mean(1))


class _Model(nn.Module):
    def __init__(self, n_image_towers=1):
        super().__init__()
        self.text = _Tokenizing()
        # towers of distinct structure: each is its own cache entry in Dynamo
        self.image = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), *[nn.Tanh()] * i)
                                   for i in range(n_image_towers))
        self.heads = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, x, captions):
        img = sum(t(x) for t in self.image)
        return self.heads[0](img), self.heads[1](self.text(captions))


def test_a_tower_called_with_strings_stays_eager_and_its_parts_compile():
    torch.manual_seed(0)
    model = _Model()
    compiled = compile_towers(model, "aot_eager")
    x = torch.randn(3, 4)
    model(x, ["a cat", "two dogs", "a bird"])
    assert compiled == ["image.0", "heads.0", "text.embed", "text.proj", "heads.1"]  # call order
    graphs = counters["stats"]["unique_graphs"]
    for captions in (["someone", "walks", "away"], ["x", "yy", "zzz"]):
        model(x, captions)
    # other captions of the same shape: no recompile (a compiled text tower
    # would guard on the strings and recompile every batch)
    assert counters["stats"]["unique_graphs"] == graphs
    eager = _Model()
    eager.load_state_dict(model.state_dict())
    for got, want in zip(model(x, ["x", "yy", "zzz"]), eager(x, ["x", "yy", "zzz"])):
        assert torch.allclose(got, want, atol=1e-6)


def test_every_tower_compiles_past_dynamos_recompile_limit():
    """Towers of distinct structure share one code object (Module._call_impl's
    wrapper): past Dynamo's 8 entries each further one would run eager."""
    model = _Model(n_image_towers=9)
    compiled = compile_towers(model, "aot_eager")
    model(torch.randn(3, 4), ["a", "b", "c"])
    assert len(compiled) == 9 + 2 + 2
    # a graph for each image tower and text part; the two heads (same structure) share one
    assert counters["stats"]["unique_graphs"] == 9 + 2 + 1


def test_backend_errors_name_the_key(tmp_path, monkeypatch):
    args = ["--config", TINY_YAML, "--logs", str(tmp_path), "--name", "bad", "--max-steps", "1",
            "--torchcompile"]
    with pytest.raises(ConfigError, match=r"torchcompile_backend: 'nonsense' is not a "
                                          r"torch.compile backend; expected one of .*'aot_eager'"):
        train_stage1.main(args + ["--torchcompile-backend", "nonsense"])

    def no_compiler():
        raise InvalidCxxCompiler()
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(ConfigError, match="inductor generates C.. on CPU and found no working "
                                          "C.. compiler .*--torchcompile-backend aot_eager"):
        train_stage1.main(args)


def _cxx_missing():
    try:
        cpp_builder.get_cpp_compiler()
    except (InvalidCxxCompiler, RuntimeError) as e:
        return str(e)
    return None


@pytest.mark.skipif(_cxx_missing() is not None, reason=f"inductor on CPU: {_cxx_missing()}")
def test_inductor_matches_eager_with_dropout(tiny_cfg, one_torch_thread):
    """Generated C++ gives eager's loss and gradients; dropout (p 0.3) draws
    eager's masks because random ops fall back to eager's generator."""
    batch = _batch(tiny_cfg)
    eager, _ = _module(tiny_cfg, 0.3, compiled=False)
    module, names = _module(tiny_cfg, 0.3, compiled=True, backend="inductor")
    ref_loss, ref = _step(eager, batch, 1)
    loss, got = _step(module, batch, 1)
    assert names == ["a", "b"]
    assert torch.allclose(loss, ref_loss, atol=1e-5)
    _assert_grads(got, ref, atol=1e-5, rtol=1e-4)


def test_stage2_compiled_equals_eager_across_the_unfreeze(tmp_path, capsys, one_torch_thread):
    """train_stage2 --torchcompile (it was ignored): frozen_then_finetune, whose
    unfreezing flips requires_grad mid-run (a recompile), ends with eager's
    weights and test metrics."""
    import json
    import train_stage2
    init = str(tmp_path / "s1" / "checkpoints" / "latest.pt")
    _main(tmp_path, "s1", "--data.num_train", "128", steps=2)   # stage 2: 4 steps an epoch
    args = ["--config", TINY_YAML, "--init", init, "--mode", "frozen_then_finetune",
            "--stage2.epochs", "2", "--stage2.frozen_epochs", "1", "--logs", str(tmp_path),
            "--model.dropout", "0.2"]
    capsys.readouterr()
    for name, extra in (("eager", []), ("compiled", BACKEND)):
        train_stage2.main(args + ["--name", name, *extra])
    assert "torch.compile (aot_eager): compiled encoder, head" in capsys.readouterr().out
    ck = {n: torch.load(tmp_path / n / "checkpoints" / "latest.pt", weights_only=False)
          for n in ("eager", "compiled")}
    assert set(ck["compiled"]["model"]) == set(ck["eager"]["model"])
    for k, v in ck["eager"]["model"].items():
        assert torch.allclose(ck["compiled"]["model"][k], v, atol=1e-6), k
    m = {n: json.load(open(tmp_path / n / "metrics.json")) for n in ("eager", "compiled")}
    assert m["compiled"]["loss"] == pytest.approx(m["eager"]["loss"], abs=1e-6)


class _CheckpointedTower(nn.Module):
    """A tower that checkpoints its own blocks (as the families' towers do
    under --grad-checkpointing), dropout inside the recomputed block."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Dropout(0.3), nn.Linear(8, 8))

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        return checkpoint(self.block, x, use_reentrant=False).tanh()


def test_checkpointing_inside_a_compiled_tower_equals_eager():
    x = torch.randn(6, 8)
    grads = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential()
        model.tower = _CheckpointedTower()
        names = compile_towers(model, "aot_eager") if compiled else []
        torch.manual_seed(3)
        model.tower(x).pow(2).sum().backward()
        assert names == (["tower"] if compiled else [])
        grads[compiled] = {n: p.grad for n, p in model.named_parameters()}
    assert counters["stats"]["unique_graphs"] >= 1
    _assert_grads(grads[True], grads[False])
