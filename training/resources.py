"""Compute threads for the machine found: never more busy threads than cores.

On a small CPU, torch's intra-op threads plus DataLoader workers plus data
generation workers that outnumber the free cores slow training by several
times (OpenMP threads spin while they wait for a core). The budget is the
cores this process may use (``os.sched_getaffinity``), shared among the ranks
of this node under ``torchrun``:

- DataLoader ``workers`` (unset: 0 up to 2 cores, where a worker's core is
  worth more to the step than the loading it hides: measured 1.3x faster for
  radar and 1.75x for sCLAP on 2 cores; 1 up to 4 cores, then a quarter of the
  cores, at most 8) run beside the training step;
- intra-op ``threads`` (unset: the cores left after the workers, at least 1);
- generator ``gen_workers`` (unset: every core) run before training, while the
  main process waits, each worker on one thread.

A value the user set (flag, YAML or ``OMP_NUM_THREADS`` for the threads) is
kept as it is.
"""
import os

import torch


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_budget(threads=None, workers=None, gen_workers=None, cores=None, local_ranks=None,
                  env=None):
    """``dict(threads, workers, gen_workers, cores, reason)`` for one rank.
    ``None`` means choose; ``cores``/``local_ranks``/``env`` override the
    machine's answers (tests)."""
    env = os.environ if env is None else env
    cores = available_cores() if cores is None else int(cores)
    local_ranks = int(env.get("LOCAL_WORLD_SIZE", 1)) if local_ranks is None else int(local_ranks)
    per_rank = max(1, cores // max(1, local_ranks))
    set_by = []
    if threads is None and env.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(env["OMP_NUM_THREADS"])
        set_by.append("threads from OMP_NUM_THREADS")
    if workers is None:
        if threads is not None:
            workers = max(0, min(per_rank - int(threads), 0 if per_rank <= 2 else 1 if per_rank <= 4 else 8))
        else:
            workers = 0 if per_rank <= 2 else 1 if per_rank <= 4 else min(8, per_rank // 4)
    else:
        set_by.append("workers set")
    if threads is None:
        threads = max(1, per_rank - int(workers))
    elif "threads from OMP_NUM_THREADS" not in set_by:
        set_by.append("threads set")
    if gen_workers is None:
        gen_workers = per_rank
    reason = (f"{cores} cores available" + (f", {per_rank} per rank of {local_ranks}"
                                             if local_ranks > 1 else "")
              + (f" ({', '.join(set_by)})" if set_by else ""))
    return {"threads": int(threads), "workers": int(workers), "gen_workers": int(gen_workers),
            "cores": cores, "per_rank": per_rank, "reason": reason}


def apply_thread_budget(cfg, set_torch=True):
    """Resolve ``cfg["threads"]``, ``cfg["workers"]`` and, where the family
    has it, ``cfg["data"]["gen_workers"]`` in place (``None``/``"auto"`` mean
    choose), set torch's intra-op threads, and return the line to print."""
    def given(v):
        return None if v in (None, "auto") else int(v)

    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    plan = thread_budget(given(cfg.get("threads")), given(cfg.get("workers")),
                         given(data.get("gen_workers")))
    cfg["threads"], cfg["workers"] = plan["threads"], plan["workers"]
    if "gen_workers" in data:
        data["gen_workers"] = plan["gen_workers"]
    if set_torch and torch.get_num_threads() != plan["threads"]:
        torch.set_num_threads(plan["threads"])
    return (f"threads: {plan['threads']} intra-op + {plan['workers']} DataLoader workers "
            f"(data generation: {plan['gen_workers']} workers); {plan['reason']}")
