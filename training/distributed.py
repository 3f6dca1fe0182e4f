"""Distributed set-up from the torchrun environment (NCCL on CUDA, gloo on CPU)."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed(device="auto", backend="auto"):
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, local_rank, world_size, dev)


def barrier(info):
    if info.distributed:
        dist.barrier()


def all_reduce_mean(value, info):
    """Mean of a python float over ranks (for logging)."""
    if not info.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device
                     if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.item() / info.world_size


def all_reduce_max(values, info):
    """Element-wise max over ranks of a list of floats (one collective for all flags)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=info.device
                     if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def cleanup(info):
    if info.distributed and dist.is_initialized():
        # Every rank first reaches the end: a rank that tears down its gloo
        # pairs while another still holds them can abort at exit ("terminate
        # called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
