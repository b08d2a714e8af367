"""Multi-process training helpers (torchrun): process group set-up, sharding and reductions.

Every helper is a no-op in a single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup() -> tuple[int, int, int]:
    """Join the process group torchrun describes; return (rank, world size, local rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
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


def gather_rows(local: torch.Tensor, total: int, views: int) -> torch.Tensor:
    """Reassemble rows sharded as ``range(rank, total, world)`` per view into the full (views*total) tensor."""
    world = world_size()
    if world == 1:
        return local
    per = -(-total // world)
    n_local = local.shape[0] // views
    padded = torch.zeros((views, per, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:, :n_local] = local.reshape(views, n_local, *local.shape[1:])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    full = torch.empty((views, total, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        count = len(range(r, total, world))
        full[:, r::world] = part[:, :count]
    return full.reshape(views * total, *local.shape[1:])


def barrier() -> None:
    """Wait for every process."""
    if world_size() > 1:
        dist.barrier()


def teardown() -> None:
    """Leave the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()
