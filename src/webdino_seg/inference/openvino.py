"""A segmentation model run by OpenVINO on the CPU in bf16 or int8 (the `openvino` extra).

int8: every Linear's weights are stored as per-output-channel int8 (symmetric, scale = max |w| / 127) and the
activations entering them are quantized per token at run time by OpenVINO's CPU plugin (dynamic quantization in
groups of `group_size` input channels): no calibration images, and the matrix products run as int8 dot products
(AVX-512 VNNI / AMX). Everything else (attention, norms, the head's convolutions) runs in bf16 where the CPU has
it natively, else float32. bf16: the float model compiled with OpenVINO's bf16 precision hint.

The graph comes from `torch.export` and is compiled once per image size (a test-time augmentation size compiles
again, once); a batch runs image by image through it.
"""

from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.segmentation import SegmentationModel

MAX_GROUP = 1024  # channels per dynamic-quantization group: wider groups ran faster on Web-DINO 300M


def available() -> bool:
    """Whether OpenVINO can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class Int8Linear(nn.Module):
    """A Linear whose weights are int8 with one float scale per output channel; its input channels are padded with
    zeros to a multiple of `group` so that OpenVINO quantizes every input in whole groups."""

    def __init__(self, linear: nn.Linear, group: int) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        self.pad = -weight.shape[1] % group
        qweight = torch.round(weight / scale).clamp(-127, 127)
        self.register_buffer("qweight", F.pad(qweight, (0, self.pad)).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (0, self.pad))
        return F.linear(x, self.qweight.to(x.dtype) * self.scale, self.bias)


def group_size(model: nn.Module) -> int:
    """The dynamic-quantization group: the largest power of two up to `MAX_GROUP` dividing the backbone's width."""
    width = model.backbone.embed_dim
    return min(MAX_GROUP, width & -width)


def int8_copy(model: nn.Module, group: int) -> tuple[nn.Module, list[str]]:
    """A float copy of `model` with every Linear replaced by an `Int8Linear` (the caller's model is untouched), and
    the names of the layers replaced."""
    copied = copy.deepcopy(model).cpu().float().eval()
    names = [name for name, module in copied.named_modules() if type(module) is nn.Linear]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = copied.get_submodule(parent) if parent else copied
        setattr(owner, child, Int8Linear(getattr(owner, child), group))
    return copied, names


class _Graph(nn.Module):
    """What is exported: the model's forward without the inference-mode block `SegmentationModel.features` opens
    (torch.export traces under no_grad instead)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.model._grid(images)
        return self.model.head(grid, images) if self.model.needs_image else self.model.head(grid)


class OpenVinoModel(nn.Module):
    """A SegmentationModel compiled by OpenVINO for the CPU, called like one: normalised images in, logits out."""

    def __init__(self, model: nn.Module, precision: str, bf16: bool) -> None:
        """`precision`: int8, bf16 or fp32; `bf16`: whether the CPU computes bf16 natively (what runs beside int8;
        `precision.native_bf16()`, which this module cannot import: precision.py imports it to choose the engine).
        `model` is a SegmentationModel, or any module with a `backbone` whose forward takes one image batch."""
        super().__init__()
        import openvino as ov

        if precision not in ("int8", "bf16", "fp32"):
            raise ValueError(f"OpenVINO runs int8, bf16 or fp32 here, not {precision!r}")
        self.precision = precision
        self.quantized: list[str] = []
        with torch.inference_mode(False):  # the copy holds normal tensors, even when made in inference mode
            if precision == "int8":
                group = group_size(model)
                graph, self.quantized = int8_copy(model, group)
                self.config = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": group}
            else:
                graph, self.config = copy.deepcopy(model).cpu().float().eval(), {}
        hint = "bf16" if bf16 and precision != "fp32" else "f32"
        self.config |= {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        }
        self.graph = (_Graph(graph) if isinstance(graph, SegmentationModel) else graph).eval()
        self.backbone = graph.backbone  # the geometry the Predictor reads (patch size)
        self._core = ov.Core()
        self._compiled: dict[tuple[int, ...], object] = {}
        self.build_seconds = 0.0

    def compile_for(self, size: tuple[int, int]) -> object:
        """The graph exported and compiled for one image of `size` (H, W); built once per size."""
        if size in self._compiled:
            return self._compiled[size]
        import openvino as ov

        start = time.perf_counter()
        example = torch.zeros(1, 3, *size)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export's and OpenVINO's notes on internals
            exported = torch.export.export(self.graph, (example,))
            converted = ov.convert_model(exported)
        self._compiled[size] = self._core.compile_model(converted, "CPU", self.config)
        self.build_seconds += time.perf_counter() - start
        return self._compiled[size]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The model's output for a (B, 3, H, W) float batch on the CPU, one image at a time (a batch runs no
        faster on a few cores, and one compiled graph then serves every batch size)."""
        compiled = self.compile_for(tuple(images.shape[-2:]))
        array = images.detach().float().contiguous().numpy()
        return torch.from_numpy(np.concatenate([compiled(array[i : i + 1])[0] for i in range(len(array))]))
