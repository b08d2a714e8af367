"""webdino-seg: semantic segmentation on frozen (or fine-tuned) Web-DINO, DINOv2 and DINOv3 backbones.

What a user reaches for first is importable from here; each name is imported on first use, so
``import webdino_seg`` itself loads no torch (see `_API`). The packages below hold the rest:
``utils`` < ``models``, ``data`` < ``inference``, ``engine`` < ``app``, each importing only lower ones.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

_API = {
    # models
    "create_backbone": "models.builder",
    "create_model": "models.builder",
    "list_variants": "models.variants",
    "get_variant": "models.variants",
    "VARIANTS": "models.variants",
    "BackboneConfig": "models.variants",
    "DinoVisionTransformer": "models.dinov2",
    "DinoV3VisionTransformer": "models.dinov3",
    "SimpleDecoder": "models.heads",
    "Linear4": "models.heads",
    "MultiLayerDecoder": "models.heads",
    "GuidedDecoder": "models.heads",
    "SegmentationModel": "models.segmentation",
    "load_model": "models.checkpoint",
    "WeightsError": "models.weights.errors",
    "load_backbone_weights": "models.weights.loading",
    "convert_weights": "models.weights.convert",
    # inference
    "Predictor": "inference.predictor",
    "run_video": "inference.video",
    "evaluate": "inference.evaluate",
    # training
    "train": "engine.train",
    "resume": "engine.train",
    "Callback": "engine.events",
    "Event": "engine.events",
    "TrainConfig": "engine.config",
    "sweep": "engine.sweep",
    "resume_sweep": "engine.sweep",
}

__all__ = [  # the names of _API, checked by tests/test_layout.py
    "VARIANTS",
    "BackboneConfig",
    "Callback",
    "DinoV3VisionTransformer",
    "DinoVisionTransformer",
    "Event",
    "GuidedDecoder",
    "Linear4",
    "MultiLayerDecoder",
    "Predictor",
    "SegmentationModel",
    "SimpleDecoder",
    "TrainConfig",
    "WeightsError",
    "__version__",
    "convert_weights",
    "create_backbone",
    "create_model",
    "evaluate",
    "get_variant",
    "list_variants",
    "load_backbone_weights",
    "load_model",
    "resume",
    "resume_sweep",
    "run_video",
    "sweep",
    "train",
]


def __getattr__(name: str) -> object:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'webdino_seg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from .engine.config import TrainConfig
    from .engine.sweep import resume_sweep, sweep
    from .engine.train import train
    from .inference.evaluate import evaluate
    from .inference.predictor import Predictor
    from .inference.video import run_video
    from .models.builder import create_backbone, create_model
    from .models.checkpoint import load_model
    from .models.dinov2 import DinoVisionTransformer
    from .models.dinov3 import DinoV3VisionTransformer
    from .models.heads import GuidedDecoder, Linear4, MultiLayerDecoder, SimpleDecoder
    from .models.segmentation import SegmentationModel
    from .models.variants import VARIANTS, BackboneConfig, get_variant, list_variants
    from .models.weights.convert import convert_weights
    from .models.weights.errors import WeightsError
    from .models.weights.loading import load_backbone_weights
