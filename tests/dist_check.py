"""Helpers for the gloo tests of the distributed criteria.

In the test process: ``run_workers`` launches a worker script under
``torchrun --standalone`` and returns its return code and output. In the
worker: ``check`` compares one rank's loss and gradients, averaged over
ranks as DDP averages them, with the single-process ones and prints one line;
``finish`` makes every rank fail if any rank failed.
"""
import os
import subprocess
import sys

import torch
import torch.distributed as dist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_workers(worker, nproc, cwd, timeout=180):
    """(return code, stdout + stderr) of ``worker`` on ``nproc`` gloo ranks."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", worker]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def mismatches(loss, ref_loss, grads, want, atol=1e-5):
    """Errors (list of str) of this rank's ``loss`` and ``grads`` {name: tensor},
    averaged over ranks (collective: every rank calls it with the same names),
    against the single-process ``ref_loss`` and ``want``."""
    world_size = dist.get_world_size()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world_size
    errs = []
    if not torch.allclose(mean_loss, ref_loss.detach(), atol=atol, rtol=0):
        errs.append(f"loss {mean_loss.item():.8f} vs {ref_loss.item():.8f}")
    for k in grads:
        g = grads[k].clone()
        dist.all_reduce(g)
        g /= world_size
        if not torch.isfinite(want[k]).all() or want[k].abs().sum() == 0:
            errs.append(f"reference grad {k} is not finite or zero")
        elif not torch.allclose(g, want[k], atol=atol, rtol=0):
            errs.append(f"grad {k}: max |diff| {(g - want[k]).abs().max().item():.3e}")
    return errs


def check(label, loss, ref_loss, grads, want, atol=1e-5):
    """``mismatches``, printed as one line per rank ending in OK or FAIL; True if OK."""
    errs = mismatches(loss, ref_loss, grads, want, atol)
    status = "OK" if not errs else "FAIL: " + "; ".join(errs)
    print(f"[rank {dist.get_rank()}] {label}: loss {loss.item():.6f} (global {ref_loss.item():.6f}) "
          f"{status}", flush=True)
    return not errs


def finish(ok):
    """Exit 1 on every rank if any rank failed, else 0."""
    flag = torch.tensor(0 if ok else 1)
    dist.all_reduce(flag)
    dist.destroy_process_group()
    sys.exit(int(flag.item() > 0))
