"""Inference precision on the CPU (`--precision auto|fp32|bf16|int8`, `--engine auto|torch|openvino`): what the
CPU can do natively, the choice of precision and engine, and PyTorch's int8 model (dynamic quantization of every
Linear: per-channel int8 weights, activations quantized per batch; attention's SDPA and the norms stay in
float32). OpenVINO's models are in `openvino.py`."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch import nn

from .names import ENGINES, PRECISIONS

# int8 against float32 eager, Web-DINO 300M at 448x448, batch 1, 2 cores (benchmarks/cpu_precision.py)
AUTO_SPEEDUP = {"openvino": "3.1x", "torch": "2.6x"}


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


def resolve(precision: str, device: torch.device, engine: str = "auto") -> tuple[str, str, str]:
    """The precision to run (fp32, bf16 or int8), the engine that runs it (torch or openvino) and one line saying
    why. On a GPU the model's own autocast rules (bf16 where native) apply and `precision` must be auto or fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: use one of {', '.join(ENGINES)}")
    if device.type != "cpu":
        if precision in ("bf16", "int8") or engine == "openvino":
            raise ValueError(
                f"--precision {precision} --engine {engine} is for the CPU; on {device.type} the model "
                "runs in bf16 where the GPU has it natively (use auto)"
            )
        return "fp32", "torch", ""
    if precision == "bf16" and not native_bf16():
        raise ValueError(
            "--precision bf16: this CPU has no native bf16 (avx512_bf16 or amx_bf16), where it is "
            "slower than fp32; use int8 or fp32"
        )
    chosen = "int8" if precision == "auto" else precision
    if chosen == "fp32":
        if engine == "openvino":
            raise ValueError("--engine openvino runs bf16 or int8; float32 runs in PyTorch (--engine auto)")
        return "fp32", "torch", ""
    runner = _engine(engine)
    said = f"{chosen} by {'OpenVINO' if runner == 'openvino' else 'PyTorch'}"
    if precision != "auto":
        return chosen, runner, f"precision: {said} (as asked)"
    vnni = "with" if {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags() else "without"
    why = f"the fastest measured, {AUTO_SPEEDUP[runner]} float32 for Web-DINO 300M at 448x448 on 2 cores" + (
        "" if runner == "openvino" else "; pip install 'webdino-seg[openvino]' for OpenVINO's, faster"
    )
    return chosen, runner, f"precision: {said} (auto: {why}; this CPU is {vnni} int8 dot-product instructions)"


def _engine(engine: str) -> str:
    """The engine for bf16 or int8: OpenVINO where installed (auto) or asked for, else PyTorch."""
    from . import openvino as ov_engine

    if engine == "openvino" and not ov_engine.available():
        raise ValueError("--engine openvino: OpenVINO is not installed (pip install 'webdino-seg[openvino]')")
    if engine == "auto":
        return "openvino" if ov_engine.available() else "torch"
    return engine


def quantize(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """An int8 copy of `model` (the caller's model is untouched) and the names of the Linear layers quantized."""
    import warnings

    names = [name for name, module in model.named_modules() if type(module) is nn.Linear]
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).cpu().float(), {nn.Linear}, dtype=torch.qint8, inplace=True
        )
    return quantized.eval(), names
