"""Charts per second of the torch rasteriser against the seed's matplotlib
drawing, measured side by side (interleaved rounds, so both see the same
machine load; matplotlib both rendered to memory and via PNG as the seed did), and their pixel agreement (IoU of line pixels).

    python benchmarks/bench_rasteriser.py [--size 224] [--batch 64] [--rounds 5]
    python benchmarks/bench_rasteriser.py --model-cost   # + what the vision branch costs a
                                                          #   quick-preset training step
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models.timesclip_model import TimesCLIP  # noqa: E402
from models.timesclip_render import VARIATE_COLOURS, line_iou, render_matplotlib, render_variates  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64, help="samples per torch call (x 7 variates)")
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mpl-charts", type=int, default=14, help="matplotlib charts per round")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model-cost", action="store_true")
    a = p.parse_args()
    if a.model_cost:
        model_cost(a)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, a.steps, 7, generator=g).cumsum(1)    # [B, T, V] random walks
    xd = x.to(a.device)
    buf = torch.empty(a.batch * 7 * 3 * a.size * a.size, device=a.device)
    render_variates(xd, a.size, out=buf)                          # warm-up
    torch_rates, mpl_rates, png_rates = [], [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        imgs = render_variates(xd, a.size, out=buf)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        torch_rates.append(a.batch * 7 / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(a.mpl_charts):
            b, v = divmod(i, 7)
            render_matplotlib(x[b % a.batch, :, v], VARIATE_COLOURS[v], a.size)
        mpl_rates.append(a.mpl_charts / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(a.mpl_charts):
            b, v = divmod(i, 7)
            render_matplotlib(x[b % a.batch, :, v], VARIATE_COLOURS[v], a.size, via_png=True)
        png_rates.append(a.mpl_charts / (time.perf_counter() - t0))

    n_ref = min(a.batch, 8)
    ref = torch.stack([render_matplotlib(x[b, :, v], VARIATE_COLOURS[v], a.size)
                       for b in range(n_ref) for v in range(7)]).view(n_ref, 7, 3, a.size, a.size)
    iou = line_iou(imgs[:n_ref].cpu(), ref)
    mad = (imgs[:n_ref].cpu() - ref).abs().mean().item()
    ratios = [t / m for t, m in zip(torch_rates, mpl_rates)]
    png_ratios = [t / m for t, m in zip(torch_rates, png_rates)]
    print(f"size {a.size}x{a.size}, {a.steps} steps, device {a.device}, {a.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")
    print(f"torch rasteriser : {statistics.median(torch_rates):9.1f} charts/s (median; "
          f"rounds {', '.join(f'{r:.0f}' for r in torch_rates)})")
    print(f"matplotlib       : {statistics.median(mpl_rates):9.1f} charts/s (median; "
          f"rounds {', '.join(f'{r:.1f}' for r in mpl_rates)})")
    print(f"matplotlib + PNG : {statistics.median(png_rates):9.1f} charts/s (median; savefig and "
          f"read back, the seed's pipeline)")
    print(f"speed-up vs mpl  : {statistics.median(ratios):9.1f}x (median of per-round ratios; "
          f"min {min(ratios):.1f}x, max {max(ratios):.1f}x)")
    print(f"speed-up vs PNG  : {statistics.median(png_ratios):9.1f}x (min {min(png_ratios):.1f}x, "
          f"max {max(png_ratios):.1f}x)")
    print(f"line-pixel IoU   : {iou:.4f} over {n_ref * 7} charts; mean |diff| {mad:.4f}")


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
