"""``--torchcompile`` (open_clip's flag): ``torch.compile`` on the model's towers.

Each direct child of the model that holds parameters (the radar, audio, image,
chart, text towers and heads) is compiled in place with ``nn.Module.compile``,
so parameter names and checkpoints are the same as in eager mode, and
``model(batch)`` itself stays eager (its Python glue: captions, optional
branches). Random ops fall back to eager's generator
(``fallback_random``), so dropout draws the same numbers as in eager mode and
``--accum-freq``'s RNG replay stays exact. Off by default: on a small CPU the
compile time (tens of seconds) is rarely won back in a short run;
``benchmarks/bench_precision.py --torchcompile`` measures it on your machine.
"""
import torch.nn as nn


def compile_towers(model, mode=None):
    """Compile ``model``'s parameter-holding children in place; returns their names."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    names = []
    for name, child in model.named_children():
        if not isinstance(child, nn.Module) or next(child.parameters(), None) is None:
            continue
        child.compile(mode=mode, dynamic=None)
        names.append(name)
    return names

