"""The one backbone builder: built on the meta device, then loaded from weights or initialised once."""

from __future__ import annotations

from pathlib import Path

import torch

from .dinov2 import DinoVisionTransformer
from .heads import create_head
from .segmentation import SegmentationModel
from .variants import BackboneConfig, get_variant
from .weights.known import family_of
from .weights.loading import load_backbone_weights


def backbone_class(cfg: BackboneConfig) -> type:
    """The ViT class of a variant's family (see `weights.families`)."""
    return family_of(cfg).model


def _on_meta() -> bool:
    """True inside ``with torch.device("meta")``: then only shapes are wanted."""
    return torch.empty(0).device.type == "meta"


def build_backbone(
    cfg: BackboneConfig, weights: str | Path | None = None, seed: int | None = None
) -> DinoVisionTransformer:
    """A backbone for `cfg`: loaded strictly from `weights` (path, URL, Hub id), or randomly initialised.

    ``weights`` ``None`` or ``"random"`` gives the official random initialisation, seeded by `seed`
    when given (the same seed gives the same backbone). Inside ``torch.device("meta")`` nothing is
    allocated or loaded. Parameters are allocated once, never initialised and then overwritten.
    """
    with torch.device("meta"):
        backbone = backbone_class(cfg)(cfg)
    if _on_meta():
        return backbone
    if weights is None or str(weights) == "random":
        # a seed gives its own random stream: the caller's global one is left where it was
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            backbone.to_empty(device="cpu")
            backbone.reset_parameters()
        return backbone
    backbone.weights_info = load_backbone_weights(backbone, weights)
    return backbone


def create_backbone(
    arch: str = "webdino-300m", weights: str | Path | None = None, seed: int | None = None, **overrides: object
) -> DinoVisionTransformer:
    """Build a backbone by variant name; `overrides` replace config fields; `weights` is a path, URL or Hub id.

    ``weights="default"`` uses the variant's official URL; ``None`` or ``"random"`` initialises randomly.
    Loading is strict.
    """
    cfg = get_variant(arch).replace(**overrides) if overrides else get_variant(arch)
    if weights == "default":
        if cfg.url is None:
            raise ValueError(f"{cfg.name} has no official weights; pass a file, URL or Hub id")
        weights = cfg.url
    return build_backbone(cfg, weights, seed)


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
