"""How a trained model is run: the one place the defaults of `predict`, `video`, `evaluate`, `demo` and the
Python API's `Predictor.from_checkpoint`, `predict_paths`, `run_video` and `evaluate` live. Importable without
torch: the CLI builds its flags from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class InferenceSettings:
    """Every inference default; the parser and the library functions read them from here."""

    device: str = "auto"  # auto (CUDA when available), cpu, cuda or cuda:N
    imgsz: tuple[int, int] | None = None  # None: the size the model was trained (or exported) at
    weights: str | None = None  # None: where training found the backbone weights
    tta: bool = False  # flips and 0.75/1/1.25 of the size, probabilities averaged
    tile: bool = False  # big images in overlapping windows at full resolution
    precision: str = "fp32"  # the exact backbone; bf16, int8 or auto on request
    engine: str = "auto"  # what runs bf16 and int8 on the CPU
    threads: int | None = None  # None: the cores this process may use
    batch: int = 8  # images (or frames) per forward pass
    mask_values: str = "ids"  # what predict's <name>_mask.png holds
    split: str = "valid"  # what evaluate scores


DEFAULTS = InferenceSettings()


def default(name: str) -> object:
    """The default of inference setting `name`."""
    return getattr(DEFAULTS, name)


def fields() -> list[str]:
    """The names of the inference settings."""
    return [f.name for f in dataclasses.fields(InferenceSettings)]
