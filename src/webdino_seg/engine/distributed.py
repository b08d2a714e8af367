"""Multi-process training helpers (torchrun): process group set-up, sharding and reductions.

Every helper is a no-op in a single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: str = "auto") -> tuple[int, int, int]:
    """Join the process group torchrun describes; return (rank, world size, local rank).

    NCCL when this run trains on CUDA GPUs, gloo otherwise (``--device cpu`` on a GPU machine included).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        on_gpu = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
        backend = "nccl" if on_gpu else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if world > 1:
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def world_size() -> int:
    """Number of processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def shard(items: torch.Tensor) -> torch.Tensor:
    """This rank's share of a batch of indices: every world_size-th item from its rank."""
    return items[rank() :: world_size()]


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place, returned); CPU tensors work under NCCL too."""
    if world_size() > 1:
        if dist.get_backend() == "nccl" and value.device.type != "cuda":
            on_gpu = value.cuda()
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            value.copy_(on_gpu)
        else:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast(obj: object) -> object:
    """Rank 0's value of a picklable object, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every process."""
    if world_size() > 1:
        dist.barrier()


def teardown() -> None:
    """Leave the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()
