"""Build backbones and segmentation models by variant name, optionally with weights."""

from __future__ import annotations

from pathlib import Path

from .backbone import DinoVisionTransformer
from .heads import create_head
from .model import SegmentationModel
from .variants import get_variant
from .weights import load_backbone_weights


def create_backbone(
    arch: str = "webdino-300m", weights: str | Path | None = None, **overrides: object
) -> DinoVisionTransformer:
    """Build a backbone by name; `overrides` replace config fields; `weights` is a path, URL or Hub id.

    ``weights="default"`` uses the variant's official URL. Loading is strict.
    """
    cfg = get_variant(arch).replace(**overrides) if overrides else get_variant(arch)
    model = DinoVisionTransformer(cfg)
    if weights is not None:
        if weights == "default":
            if cfg.url is None:
                raise ValueError(f"{cfg.name} has no official weights; pass a file, URL or Hub id")
            weights = cfg.url
        model.weights_info = load_backbone_weights(model, weights)
    return model


def create_model(
    arch: str = "webdino-300m",
    weights: str | Path | None = None,
    num_classes: int = 2,
    head: str = "simple",
    fine_tune: bool = False,
    **overrides: object,
) -> SegmentationModel:
    """Backbone + head in one call."""
    backbone = create_backbone(arch, weights, **overrides)
    return SegmentationModel(backbone, create_head(head, backbone.embed_dim, num_classes), fine_tune=fine_tune)
