"""Worker processes for the data generators.

Spawn, not fork: forking a process whose torch / OpenMP threads hold locks can
deadlock the children (seen when a generator runs inside pytest or eval.py).

A spawned child first re-runs the top level of the launching script (as
``__mp_main__``) so that functions defined there can be unpickled. For
``train_stage1.py`` that is every family, transformers and torch: about 8 s per
worker on 2 cores before the first job, against about 2 s for a generator
module alone (``python benchmarks/bench_radar_generator.py``). The generators'
jobs are functions of importable modules, so ``spawn_context()`` starts the
children without it: while they start, ``__main__`` names no file, which is
how Python's own spawn treats an interactive session.
"""
import contextlib
import multiprocessing as mp
import sys


@contextlib.contextmanager
def spawn_context():
    """The spawn context, for starting a Pool or ProcessPoolExecutor's workers
    inside the ``with`` block; they skip the launching script's top level."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__} if main is not None else {}
    if main is not None:
        main.__dict__.pop("__file__", None)      # `python script.py`
        main.__spec__ = None                     # `python -m module`
    try:
        yield mp.get_context("spawn")
    finally:
        if main is not None:
            for k in ("__file__", "__spec__"):
                if k in saved:
                    setattr(main, k, saved[k])
