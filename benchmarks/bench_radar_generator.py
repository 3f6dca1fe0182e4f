"""Radar data generator throughput: clips/s with 1 and 2 worker processes,
measured side by side in one run, plus where a clip's time goes and what
starting 2 workers costs when train_stage1.py launches them, with and without
re-running its top level in every worker (data/workers.py).

    python benchmarks/bench_radar_generator.py [--clips 200]
"""
import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data.radar.actions import sample_clip  # noqa: E402
from data.radar.fmcw import RadarConfig  # noqa: E402
from data.radar.motion import forward_kinematics, sample_body  # noqa: E402
from data.radar.sim import generate_radar_dataset, generator_params, simulate_clip  # noqa: E402
from data.workers import spawn_context  # noqa: E402


def pool_startup(lean, workers=2, rounds=2):
    """Seconds for a spawn pool of ``workers`` to start and answer once, as if
    launched by train_stage1.py (each worker imports the clip simulator, as a
    generator job does); the fastest of ``rounds``."""
    main = sys.modules["__main__"]
    saved, main.__file__ = main.__file__, os.path.join(ROOT, "train_stage1.py")
    best = float("inf")
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            with spawn_context() if lean else _plain_spawn() as ctx, ctx.Pool(workers) as pool:
                pool.starmap(generator_params, [(1, 1, 1, 0)] * workers)   # imports the simulator
            best = min(best, time.perf_counter() - t0)
    finally:
        main.__file__ = saved
    return best


class _plain_spawn:
    def __enter__(self):
        return mp.get_context("spawn")

    def __exit__(self, *exc):
        return False


def clips_per_s(n, workers):
    root = tempfile.mkdtemp(prefix="bench_radar_")
    try:
        t0 = time.perf_counter()
        generate_radar_dataset(root, n - 2, 1, 1, seed=123, workers=workers)
        return n / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(root)


def breakdown(n):
    """Seconds per clip: motion + kinematics alone, and the whole simulation (no file I/O)."""
    params, cfg = generator_params(1, 1, 1, 0), RadarConfig()
    rng = np.random.default_rng(0)
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        for _ in range(n):
            body = sample_body(rng)
            pose, _ = sample_clip(rng, body, fine_rate=100.0)
            forward_kinematics(pose, body)
        motion = (time.perf_counter() - t0) / n
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            simulate_clip(rng, params, cfg)
        total, cpu = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
    return motion, total, cpu


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=200)
    args = ap.parse_args()
    print(f"cores visible: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    motion, total, cpu = breakdown(max(args.clips // 4, 10))
    print(f"per clip: motion+kinematics {1e3 * motion:.1f} ms, full simulation {1e3 * total:.1f} ms "
          f"(radar maps {100 * (total - motion) / total:.0f}%), CPU time of the simulation {1e3 * cpu:.1f} ms")
    one = clips_per_s(args.clips, 1)
    two = clips_per_s(args.clips, 2)
    print(f"generate_radar_dataset, {args.clips} clips incl. writing files:")
    print(f"  workers=1: {one:6.1f} clips/s")
    print(f"  workers=2: {two:6.1f} clips/s  (x{two / one:.2f})")
    preset = yaml.safe_load(open(os.path.join(ROOT, "configs", "radar.yaml")))["presets"]["quick"]
    quick = sum(preset[f"data.num_{s}"] for s in ("train", "val", "test"))
    print(f"  -> the quick preset's {quick} clips at workers=2: ~{quick / two / 60:.1f} min")
    full, lean = pool_startup(False), pool_startup(True)
    print(f"2 spawned workers ready, launched from train_stage1.py: {full:.1f} s re-running its top level, "
          f"{lean:.1f} s without (data/workers.py; x{lean / full:.2f})")
