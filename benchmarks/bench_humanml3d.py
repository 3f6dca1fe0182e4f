"""HumanML3D -> radar throughput: motions/s (each simulated from the eight
placements A..H, as training clips are) with 1 and 2 worker processes,
measured side by side in one run, plus where one motion's time goes.

    python benchmarks/bench_humanml3d.py [--motions 48]

Motions are constructed SMPL-22 walks/stands of HumanML3D's typical 40-200
frames (tests/smpl_motions.py), written as a HumanML3D folder.
"""
import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data.radar.humanml3d import HUMANML3D_DEFAULTS, init_worker, build_humanml3d, humanml3d_params, simulate_motion  # noqa: E402
from data.radar.smpl import extend, resample  # noqa: E402
from tests.smpl_motions import walk  # noqa: E402


def make_source(root, n, seed=0):
    """n constructed motions, lengths uniform in 40..200 frames; returns the mean length."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "new_joints"))
    os.makedirs(os.path.join(root, "texts"))
    lengths = rng.integers(40, 201, n)
    for i, t_len in enumerate(lengths):
        j = walk(int(t_len), float(rng.uniform(0, 1.6)), lateral=float(rng.uniform(-0.3, 0.3)))
        np.save(os.path.join(root, "new_joints", f"{i:06d}.npy"), j.astype(np.float32))
        with open(os.path.join(root, "texts", f"{i:06d}.txt"), "w") as f:
            f.write("a person walks#a/DET person/NOUN walk/VERB#0.0#0.0\n")
    for split, ids in (("train", range(n)), ("val", []), ("test", [])):
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("".join(f"{i:06d}\n" for i in ids))
    return float(lengths.mean())


def motions_per_s(src, workers):
    out = tempfile.mkdtemp(prefix="bench_h3d_out_")
    try:
        p = humanml3d_params(src)
        t0 = time.perf_counter()
        info = build_humanml3d(p["source"], out, p, workers=workers)
        dt = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
        n = info["motions"]["train"]
        return n / dt, info["splits"]["train"] / dt, size / n
    finally:
        shutil.rmtree(out)


def pool_startup(workers=2):
    """Seconds for a spawn pool to start and answer once (each worker imports the
    simulator, and with it torch through data/cache.py -> training/io.py)."""
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers, initializer=init_worker) as pool:
        pool.map(abs, range(workers))
    return time.perf_counter() - t0


def breakdown(n=10, frames=120):
    """Seconds per motion of `frames` frames: the spline alone, and all eight placements (no file I/O)."""
    p = dict(HUMANML3D_DEFAULTS)
    j = walk(frames, 1.2)
    with threadpool_limits(limits=1):
        simulate_motion(j, "A", p)                       # kernel matrices built once per process
        t0 = time.perf_counter()
        for _ in range(n):
            resample(extend(j), 20.0, 20.0)
        spline = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            simulate_motion(j, p["placements"], p)
        total = (time.perf_counter() - t0) / n
    return spline, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--motions", type=int, default=48)
    args = ap.parse_args()
    src = tempfile.mkdtemp(prefix="bench_h3d_src_")
    try:
        mean_len = make_source(src, args.motions)
        print(f"{args.motions} constructed motions, {mean_len:.0f} frames on average (40-200), "
              f"8 placements each, {os.cpu_count()} CPUs")
        for workers in (1, 2):
            m, c, size = motions_per_s(src, workers)
            print(f"workers={workers}: {m:6.2f} motions/s  ({c:6.1f} radar clips/s, "
                  f"{1 / m:.2f} s per motion, {size / 1e6:.1f} MB on disk per motion, float32)")
    finally:
        shutil.rmtree(src)
    print(f"spawn pool of 2 started in {pool_startup():.1f} s (included in workers=2 above)")
    spline, total = breakdown()
    print(f"one 120-frame motion, 1 thread: spline {spline * 1e3:.1f} ms, 8 placements simulated "
          f"{total * 1e3:.0f} ms ({total / 8 * 1e3:.0f} ms a placement), file writes excluded")


if __name__ == "__main__":
    main()
