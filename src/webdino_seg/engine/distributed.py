"""Multi-process training helpers (torchrun): process group set-up, sharding and reductions.

Every helper is a no-op in a single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_ENV = "WEBDINO_SEG_DIST_TIMEOUT_S"  # how long a collective waits for the slowest process (default 30 min)


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
        dist.init_process_group(backend, timeout=timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 1800))))
    if world > 1:
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def world_size() -> int:
    """Number of processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def local_rank() -> int:
    """This process's rank on its machine (torchrun's LOCAL_RANK; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if dist.is_initialized() else 0


def local_world_size() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size())) if dist.is_initialized() else 1


def node() -> int:
    """This machine's index among the run's machines (torchrun's GROUP_RANK; 0 without torchrun)."""
    return int(os.environ.get("GROUP_RANK", "0")) if dist.is_initialized() else 0


def any_true(flag: bool) -> bool:
    """Whether `flag` is true on any process."""
    return bool(all_sum(torch.tensor([int(flag)]))[0] > 0)


def shard(items: torch.Tensor) -> torch.Tensor:
    """This rank's share of a batch of indices: every world_size-th item from its rank."""
    return items[rank() :: world_size()]


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place, returned); CPU tensors work under NCCL too."""
    return _all_reduce(value, dist.ReduceOp.SUM)


def all_min(value: torch.Tensor) -> torch.Tensor:
    """The element-wise minimum of a tensor over all processes (in place, returned); CPU tensors work under NCCL
    too."""
    return _all_reduce(value, dist.ReduceOp.MIN)


def _all_reduce(value: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    """Reduce `value` in place with `op` over all processes; under NCCL a CPU tensor goes through the GPU."""
    if world_size() > 1:
        if dist.get_backend() == "nccl" and value.device.type != "cuda":
            on_gpu = value.cuda()
            dist.all_reduce(on_gpu, op=op)
            value.copy_(on_gpu)
        else:
            dist.all_reduce(value, op=op)
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


class SyncedBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch across all processes (gloo or NCCL,
    CPU or GPU), so a multi-process run normalises, and keeps running statistics, as one process would; every
    process then holds the same running statistics. Outside training, or alone, it is a plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable: gradients flow across processes

        c = x.shape[1]
        local = x.float()
        count = torch.full((1,), local.numel() / c, dtype=torch.float32, device=x.device)
        stats = all_reduce(torch.cat([local.sum((0, 2, 3)), (local * local).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked + 1)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
            self.num_batches_tracked += 1
        shape = (1, c, 1, 1)
        y = (local - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm2d in `module` (in place) by a `SyncedBatchNorm2d` holding the same state."""
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            synced = SyncedBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            ).to(child.weight.device)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            sync_batchnorm(child)
    return module
