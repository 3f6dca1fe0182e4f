"""``--torchcompile`` (open_clip's flag): ``torch.compile`` on the model's towers.

What is compiled: the outermost modules under the model that are called with
tensors only. Each parameter-holding child of the model (the radar, audio,
image, chart, text towers and heads) gets a one-shot dispatcher; at its first
call it looks at the arguments:

- tensors (and numbers, None, tuples/lists/dicts of them): the module is
  compiled in place with ``nn.Module.compile`` and this very call runs compiled;
- anything else (captions, cache keys: strings, bytes, objects): the module is
  glue and stays eager, and its own parameter-holding children get a
  dispatcher in turn. Dynamo would otherwise trace the tokenizer and the
  feature caches and guard on the strings and token ids themselves: a
  recompile every batch until its recompile limit, then eager anyway.

``nn.Module.compile`` leaves the module object, its parameters and so the
checkpoint keys as they are (no ``_orig_mod.``), so checkpoints load the same
with or without the flag, and ``model(batch)`` itself stays eager. Random ops
fall back to eager's generator (``fallback_random``), so dropout draws the
numbers eager draws and ``--accum-freq``'s RNG replay stays exact.

``torchcompile_backend``: ``inductor`` (the default: generated C++ on CPU, needs
a C++ compiler) or any ``torch._dynamo.list_backends`` name; ``aot_eager``
traces the same graphs (AOT autograd included) without code generation (the
tests use it: inductor takes minutes per tower on a small CPU). Off by
default: on a small CPU the compile time is rarely won back in a short run;
``benchmarks/bench_precision.py --torchcompile`` measures it on your machine.
"""
import torch
import torch._dynamo
import torch._inductor.config as inductor_config
import torch.nn as nn
from torch._inductor import cpp_builder
from torch._inductor.exc import InvalidCxxCompiler

from training.config import ConfigError

_LEAVES = (torch.Tensor, int, float, bool, type(None), torch.dtype, torch.device)


def _tensor_only(value):
    """True if ``value`` is a tensor, a number or None, or a container of them."""
    if isinstance(value, (tuple, list)):
        return all(_tensor_only(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _tensor_only(v) for k, v in value.items())
    return isinstance(value, _LEAVES)


def check_backend(backend, device):
    """A ConfigError naming ``torchcompile_backend`` unless ``backend`` can run on ``device``."""
    names = set(torch._dynamo.list_backends(exclude_tags=()))
    if backend not in names:
        raise ConfigError(f"torchcompile_backend: {backend!r} is not a torch.compile backend; "
                          f"expected one of {sorted(names)}")
    if backend == "inductor" and torch.device(device).type == "cpu":
        try:
            cpp_builder.get_cpp_compiler()
        except (InvalidCxxCompiler, RuntimeError) as e:
            raise ConfigError(f"torchcompile_backend: inductor generates C++ on CPU and found no "
                              f"working C++ compiler ({e}); install g++ or clang, set CXX, or "
                              f"pass --torchcompile-backend aot_eager") from None


def _has_params(module):
    return next(module.parameters(), None) is not None


def _arm(module, name, backend, mode, compiled):
    """Give ``module`` (or, for a ModuleList/ModuleDict, which is never called
    itself, each of its elements) the one-shot dispatcher described above."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        for child_name, child in module.named_children():
            if _has_params(child):
                _arm(child, f"{name}.{child_name}", backend, mode, compiled)
        return

    def first_call(*args, **kwargs):
        module._compiled_call_impl = None
        if _tensor_only(args) and _tensor_only(kwargs):
            module.compile(backend=backend, mode=mode)
            compiled.append(name)
            # Every module compiled with nn.Module.compile is a cache entry of ONE
            # code object (the wrapper around Module._call_impl), once per structure
            # and per train/eval/no_grad/shape variant; past Dynamo's recompile_limit
            # (8 per code object) every further tower would silently run eager.
            # Give each compiled module the 8 entries a function of its own has.
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, 8 * len(compiled))
        else:  # glue: eager, its parts decide at their own first call
            for child_name, child in module.named_children():
                if _has_params(child):
                    _arm(child, f"{name}.{child_name}", backend, mode, compiled)
        return module(*args, **kwargs)

    # nn.Module._wrapped_call_impl calls _compiled_call_impl when it is set
    module._compiled_call_impl = first_call


def compile_towers(model, backend="inductor", mode=None, device="cpu"):
    """Arm ``model``'s parameter-holding children for compilation in place.

    Returns the list that fills with the dotted names of the modules compiled
    (at their first call: ``model.train()`` / ``eval()`` and new input shapes
    recompile them then, inside the same modules)."""
    check_backend(backend, device)
    inductor_config.fallback_random = True
    compiled = []
    for name, child in model.named_children():
        if _has_params(child):
            _arm(child, name, backend, mode, compiled)
    return compiled
