"""Checkpoint files: keep-last-N and best-K in ``logs/<name>/checkpoints/``.

A checkpoint is one ``torch.save`` dict of named state dicts (see
``training/state.py``), written atomically (``training.io``), so a kill at
any moment leaves either the old or the new file, never a torn one.
``latest.pt``, ``best.pt`` and ``best_*.pt`` are hard links to the step files
(relinked atomically as well). Stage 1 and stage 2 write the same layout.
"""
import glob
import json
import os
import re
import subprocess

import torch

from training.io import atomic_json, atomic_save, relink

__all__ = ["CheckpointManager", "atomic_save", "find_resume", "git_commit", "load_checkpoint"]

STEP_RE = re.compile(r"step_(\d+)\.pt$")


def git_commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:
        return None


class CheckpointManager:
    """Writes step checkpoints, keeps the last ``keep_last`` and the best
    ``keep_best`` by a monitored metric; its bookkeeping lives in index.json."""

    def __init__(self, ckpt_dir, keep_last=2, keep_best=3, mode="min"):
        self.dir = ckpt_dir
        self.keep_last, self.keep_best, self.mode = keep_last, keep_best, mode
        os.makedirs(ckpt_dir, exist_ok=True)
        self.index_path = os.path.join(ckpt_dir, "index.json")
        self.best = []  # [(metric, step, filename)]
        if os.path.exists(self.index_path):
            with open(self.index_path) as f:
                self.best = [tuple(b) for b in json.load(f).get("best", [])]

    def _step_path(self, step):
        return os.path.join(self.dir, f"step_{step:08d}.pt")

    def save(self, state, step, metric=None):
        path = self._step_path(step)
        atomic_save(state, path)
        relink(path, os.path.join(self.dir, "latest.pt"))
        if metric is not None and self.keep_best > 0:
            self._update_best(metric, step, path)
        self._prune()
        return path

    def _update_best(self, metric, step, path):
        name = f"best_step_{step:08d}.pt"
        self.best = [b for b in self.best if b[1] != step] + [(float(metric), step, name)]
        self.best.sort(key=lambda b: b[0], reverse=self.mode == "max")
        if any(b[1] == step for b in self.best[: self.keep_best]):
            relink(path, os.path.join(self.dir, name))
        for _, _, dropped in self.best[self.keep_best:]:
            p = os.path.join(self.dir, dropped)
            if os.path.exists(p):
                os.remove(p)
        self.best = self.best[: self.keep_best]
        if self.best:
            relink(os.path.join(self.dir, self.best[0][2]), os.path.join(self.dir, "best.pt"))
        atomic_json(self.index_path, {"best": self.best, "mode": self.mode})

    def _prune(self):
        steps = sorted(glob.glob(os.path.join(self.dir, "step_*.pt")))
        for p in steps[: max(0, len(steps) - self.keep_last)]:
            os.remove(p)  # best_*.pt and latest.pt are separate links to the same data
        for tmp in glob.glob(os.path.join(self.dir, "*.tmp.*")):
            try:
                if int(tmp.rsplit(".", 1)[1]) != os.getpid():
                    os.remove(tmp)  # left by a killed writer
            except (ValueError, OSError):
                pass


def find_resume(resume, run_dir):
    """``latest`` -> the run's newest step file (each is written atomically, so
    it is complete even when the run was killed before ``latest.pt`` was
    relinked), else ``latest.pt``; or a path."""
    if resume != "latest":
        if not os.path.exists(resume):
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
        return resume
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    steps = sorted(glob.glob(os.path.join(ckpt_dir, "step_*.pt")))
    if steps:
        return steps[-1]
    latest = os.path.join(ckpt_dir, "latest.pt")
    return latest if os.path.exists(latest) else None


def load_checkpoint(path, map_location="cpu"):
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise RuntimeError(f"{path}: not a readable checkpoint ({e})") from e
    for key in ("model", "config"):
        if key not in ckpt:
            raise KeyError(f"{path}: checkpoint has no {key!r} entry (keys: {sorted(ckpt)})")
    return ckpt
