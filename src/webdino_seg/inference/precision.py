"""Inference precision on the CPU (`--precision auto|fp32|bf16|int8`): what the CPU can do natively, the choice,
and the int8 model (dynamic quantization of every Linear: per-channel int8 weights, activations quantized per
batch; attention's SDPA and the norms stay in float32)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "int8")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.split(":", 1)[-1].split())


def native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve(precision: str, device: torch.device) -> tuple[str, str]:
    """The precision to run (fp32, bf16 or int8) and one line saying why. On a GPU the model's own autocast rules
    (bf16 where native) apply and `precision` must be auto or fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if device.type != "cpu":
        if precision in ("bf16", "int8"):
            raise ValueError(f"--precision {precision} is for the CPU; on {device.type} the model runs in bf16 "
                             "where the GPU has it natively (use auto)")  # fmt: skip
        return "fp32", ""
    if precision == "bf16" and not native_bf16():
        raise ValueError("--precision bf16: this CPU has no native bf16 (avx512_bf16 or amx_bf16), where it is "
                         "slower than fp32; use int8 or fp32")  # fmt: skip
    if precision == "fp32":
        return "fp32", ""
    if precision != "auto":
        return precision, f"precision: {precision} (as asked)"
    vnni = "with" if {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags() else "without"
    return "int8", (f"precision: int8 (auto: dynamic int8 Linears were the fastest on the CPU measured, 2.5x "
                    f"float32 for Web-DINO 300M at 448x448; this CPU is {vnni} int8 dot-product instructions)")


def quantize(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """An int8 copy of `model` (the caller's model is untouched) and the names of the Linear layers quantized."""
    import warnings

    names = [name for name, module in model.named_modules() if type(module) is nn.Linear]
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().float(), {nn.Linear},
                                                           dtype=torch.qint8, inplace=True)  # fmt: skip
    return quantized.eval(), names
