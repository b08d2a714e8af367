"""Device and precision policy shared by training, the feature cache, inference and the benchmark.

One place decides which device runs, whether bf16 autocast is used (CUDA with bf16 support
only: CPU results stay exact), and which CUDA speed flags a block of work runs with (TF32
matmuls, cuDNN autotuning for the static input sizes this package uses). Nothing here changes
process-wide state for good: the flags are set for a block and restored after it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def yield_to_model(steps: int = 10) -> None:
    """Lower this thread's CPU priority by `steps` nice levels (Linux; elsewhere nothing): where the cores are
    short, the model's threads run first and this one (a codec's, and the threads it starts) takes what they
    leave, instead of stalling every operation of the model on the core it took."""
    import threading

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
    except (AttributeError, OSError):  # no per-thread priorities here, or not allowed: it only costs speed
        pass


def set_threads(threads: int | None) -> int:
    """Use `threads` threads (default: the usable cores) for PyTorch's work inside each operation; returns it."""
    count = usable_cores() if threads is None else threads
    if count < 1:
        raise ValueError(f"--threads must be at least 1, got {count}")
    torch.set_num_threads(count)
    return count


def codec_threads(threads: int) -> int:
    """Threads for each of video decoding and encoding beside `threads` for the model: a quarter, at least 1, so
    the three stages, which run at once, do not fight over the cores."""
    return max(1, threads // 4)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; an unavailable CUDA is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for `device`: bf16 on a CUDA GPU with native bf16 (compute capability 8.0 on: A100, H100,
    RTX 30xx and later), else None (fp32): T4, V100 and RTX 20xx only emulate bf16, slower than fp32."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if _bf16_supported(device) else None


@functools.cache
def _bf16_supported(device: torch.device) -> bool:
    """Native bf16: `torch.cuda.is_bf16_supported()` also counts emulation, so the capability decides."""
    if torch.version.hip:  # ROCm: the question means native there
        return torch.cuda.is_bf16_supported()
    return torch.cuda.get_device_capability(device)[0] >= 8


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where `amp_dtype` allows it; nothing otherwise."""
    dtype = amp_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def prepare_model(model: torch.nn.Module, device: torch.device, amp: bool = True) -> torch.nn.Module:
    """Move a segmentation model to `device`; where autocast would run in bf16, keep its frozen backbone
    in bf16 once instead (see `SegmentationModel.freeze_in`)."""
    model.to(device)
    dtype = amp_dtype(device, amp)
    if dtype is not None and hasattr(model, "freeze_in"):
        model.freeze_in(dtype)
    return model


@dataclass(frozen=True)
class RunContext:
    """Where a job's model runs and in what precision: `device`, and bf16 autocast where `amp` asks for it and the
    device has native bf16 (see `amp_dtype`). One is made per job and handed down instead of (device, amp)."""

    device: torch.device
    amp: bool = True

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for float32."""
        return amp_dtype(self.device, self.amp)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where this context runs in bf16; nothing otherwise."""
        return autocast(self.device, self.amp)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` on this device, its frozen backbone in bf16 where autocast would be (see `prepare_model`)."""
        return prepare_model(model, self.device, self.amp)


@contextlib.contextmanager
def speed_flags(device: torch.device) -> Iterator[None]:
    """Within the block, on a CUDA device: TF32 matmuls and convolutions and cuDNN autotuning (input sizes are
    fixed per run); the process's own settings are restored after it. Nothing on the CPU."""
    if device.type != "cuda":
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = (
            before
        )


def describe(device: torch.device) -> dict:
    """What ran: device name, torch and CUDA versions, precision and speed flags (for reports)."""
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "amp_dtype": str(amp_dtype(device)).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info |= {
            "device_name": torch.cuda.get_device_name(device),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "flash_sdp": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient_sdp": torch.backends.cuda.mem_efficient_sdp_enabled(),
        }
    return info
