"""Charts per second of the torch rasteriser against the seed's matplotlib
drawing, measured side by side in interleaved rounds (so every side sees the
same machine load), and their pixel agreement (IoU of line pixels).

Sides, each rendering 224 x 224 charts to memory unless --size says otherwise:
  torch uint8      : render_variates(..., dtype=torch.uint8) -> [B, V, 3, H, W] uint8,
                     --torch-calls calls a round, each --batch x 7 charts into a reused buffer
  torch float      : the same as float32 in [0, 1] (what the model consumes)
  matplotlib       : the seed's drawing, one figure per chart, drawn and read back as Agg's
                     own RGBA uint8 [H, W, 4] buffer (no conversion: its cheapest output)
  matplotlib reuse : one figure for all charts, only the line's data and colour set per chart
                     (set_data + draw), RGBA copied out: an extra, faster reference
  matplotlib + PNG : one figure per chart, savefig to PNG and read back (the seed's pipeline)
The goal line is "speed-up vs mpl": torch uint8 against matplotlib (figure per chart).

    python benchmarks/bench_rasteriser.py [--size 224] [--batch 64] [--rounds 5] [--threads 1]
    python benchmarks/bench_rasteriser.py --model-cost   # + what the vision branch costs a
                                                          #   quick-preset training step
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models.timesclip.model import TimesCLIP  # noqa: E402
from models.timesclip.render import VARIATE_COLOURS, chart_points, line_iou, render_matplotlib, \
    render_variates  # noqa: E402


class ReusedFigure:
    """The seed's drawing with one figure kept across charts: per chart only
    the line's data and colour change before the canvas is drawn again."""

    def __init__(self, size=224, line_width=2.0, dpi=100):
        self.size = size
        self.fig = Figure(figsize=(size / dpi, size / dpi), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        ax = self.fig.add_axes([0, 0, 1, 1])
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        ax.axis("off")
        self.line, = ax.plot([0, 1], [0, 1], linewidth=line_width * 72.0 / dpi, antialiased=True,
                             solid_capstyle="round", solid_joinstyle="round")

    def __call__(self, series, colour):
        """series [T] -> RGBA uint8 [size, size, 4] (a copy: the canvas is reused)."""
        px, py = chart_points(torch.as_tensor(np.asarray(series, np.float32)).view(1, -1), self.size)
        self.line.set_data(px.numpy(), py[0].numpy())
        self.line.set_color(colour)
        self.canvas.draw()
        return np.array(self.canvas.buffer_rgba())


def rate(fn, n):
    """Charts per second of fn() drawing n charts."""
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64, help="samples per torch call (x 7 variates)")
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--torch-calls", type=int, default=4, help="torch calls per round and side")
    p.add_argument("--mpl-charts", type=int, default=14, help="matplotlib charts per round and side")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (matplotlib draws on one); 0: torch's default")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model-cost", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model_cost:
        model_cost(a)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, a.steps, 7, generator=g).cumsum(1)    # [B, T, V] random walks
    xd = x.to(a.device)
    n = a.batch * 7
    bufs = {dt: torch.empty(n * 3 * a.size * a.size, device=a.device, dtype=dt)
            for dt in (torch.uint8, torch.float32)}
    reused = ReusedFigure(a.size)
    mpl_inputs = [(x[i // 7 % a.batch, :, i % 7], VARIATE_COLOURS[i % 7]) for i in range(a.mpl_charts)]

    def torch_side(dt):
        def run():
            for _ in range(a.torch_calls):
                render_variates(xd, a.size, out=bufs[dt], dtype=dt)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
        return run

    sides = {
        "torch uint8": (torch_side(torch.uint8), n * a.torch_calls),
        "torch float": (torch_side(torch.float32), n * a.torch_calls),
        "matplotlib": (lambda: [render_matplotlib(s, c, a.size, raw=True) for s, c in mpl_inputs],
                       a.mpl_charts),
        "matplotlib reuse": (lambda: [reused(s, c) for s, c in mpl_inputs], a.mpl_charts),
        "matplotlib + PNG": (lambda: [render_matplotlib(s, c, a.size, via_png=True) for s, c in mpl_inputs],
                             a.mpl_charts),
    }
    for fn, _ in sides.values():                                    # warm-up
        fn()
    rates = {k: [] for k in sides}
    for _ in range(a.rounds):
        for k, (fn, count) in sides.items():
            rates[k].append(rate(fn, count))

    n_ref = min(a.batch, 8)
    ref = torch.stack([render_matplotlib(x[b, :, v], VARIATE_COLOURS[v], a.size)
                       for b in range(n_ref) for v in range(7)]).view(n_ref, 7, 3, a.size, a.size)
    imgs = {"uint8": render_variates(xd[:n_ref], a.size, dtype=torch.uint8).cpu().float() / 255,
            "float": render_variates(xd[:n_ref], a.size).cpu()}
    print(f"size {a.size}x{a.size}, {a.steps} steps, {n} charts per torch call, {a.torch_calls} calls "
          f"and {a.mpl_charts} matplotlib charts per round and side, {a.rounds} interleaved rounds, "
          f"device {a.device}, torch threads {torch.get_num_threads()}")
    outputs = {"torch uint8": "uint8 [B, V, 3, H, W]", "torch float": "float32 [B, V, 3, H, W]",
               "matplotlib": "uint8 RGBA [H, W, 4] per chart, figure per chart",
               "matplotlib reuse": "uint8 RGBA [H, W, 4] per chart, one figure reused",
               "matplotlib + PNG": "float32 [3, H, W] per chart, via savefig PNG (seed's pipeline)"}
    for k, r in rates.items():
        print(f"{k:17s}: {statistics.median(r):9.1f} charts/s (median; rounds "
              f"{', '.join(f'{v:.0f}' for v in r)}) -> {outputs[k]}")
    for ours in ("torch uint8", "torch float"):
        for base, label in (("matplotlib", "mpl"), ("matplotlib reuse", "mpl reuse"),
                            ("matplotlib + PNG", "PNG")):
            ratios = [t / m for t, m in zip(rates[ours], rates[base])]
            print(f"{ours[6:]:5s} speed-up vs {label:9s}: {statistics.median(ratios):7.1f}x (median of "
                  f"per-round ratios; min {min(ratios):.1f}x, max {max(ratios):.1f}x)")
    for k, im in imgs.items():
        print(f"line-pixel IoU ({k:5s} vs matplotlib): {line_iou(im, ref):.4f} over {n_ref * 7} charts; "
              f"mean |diff| {(im - ref).abs().mean().item():.4f}")


def model_cost(a):
    """Training-step time (forward + backward, batch 64) of the quick preset's
    TimesCLIP with both views against the language view alone, interleaved."""
    quick = dict(d_model=64, embed_dim=64, image_size=32, vision_patch=16, vision_width=64,
                 vision_layers=1, line_width=1.0)
    models = {"vision+language": TimesCLIP(**quick).to(a.device),
              "language only": TimesCLIP(use_vision=False, **quick).to(a.device)}
    x = torch.randn(64, 18, 7, device=a.device)
    times = {k: [] for k in models}
    for r in range(a.rounds + 1):
        for k, m in models.items():
            t0 = time.perf_counter()
            m({"x": x})["forecast"].sum().backward()
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            if r:
                times[k].append(time.perf_counter() - t0)
    for k, t in times.items():
        print(f"step {k:16s}: {1000 * statistics.median(t):7.1f} ms (median of {len(t)})")
    ratio = [v / l for v, l in zip(times["vision+language"], times["language only"])]
    print(f"vision branch cost: x{statistics.median(ratio):.2f} step time (median per-round ratio)")


if __name__ == "__main__":
    main()
