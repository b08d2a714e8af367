"""Which key convention a state dict uses and which variant it fits, over both families' key tables."""

from __future__ import annotations

from ..variants import VARIANTS, BackboneConfig
from .errors import StateDict, WeightsError
from .known import detect, owner

ARCHITECTURE_FIELDS = (
    "embed_dim",
    "depth",
    "num_heads",
    "ffn",
    "mlp_ratio",
    "patch_size",
    "img_size",
    "num_register_tokens",
    "interpolate_offset",
    "interpolate_antialias",
    "layer_norm_eps",
)


def detect_format(sd: StateDict) -> str:
    """Name the key convention: ``official-chunked``, ``official``, ``hf-v4``, ``hf-v5`` (DINOv2 family), or
    ``official-dinov3``, ``hf-dinov3`` (each family names its own, see `families`)."""
    return detect(sd)[1]


def to_official(sd: StateDict) -> tuple[StateDict, str]:
    """Convert any supported naming to the official un-chunked one; return it and the detected format."""
    family, fmt = detect(sd)
    return family.to_official(sd, fmt), fmt


def guess_variants(sd: StateDict) -> list[str]:
    """Every variant whose shapes an official-named state dict has (see each family's `guess`)."""
    return owner(sd).guess(sd)


def guess_variant(sd: StateDict) -> str | None:
    """Name the variant whose shapes an official-named state dict has, if any (the first of equals), else
    describe the unlisted model it looks like."""
    names = guess_variants(sd)
    return names[0] if names else owner(sd).describe_unlisted(sd)


def variant_from_keys(sd: StateDict, source: str) -> BackboneConfig:
    """The one architecture a state dict's keys and shapes allow; several that differ (e.g. in heads) or none
    is a `WeightsError` that asks for --arch."""
    names = guess_variants(sd)
    if not names:
        raise WeightsError(f"{source}: cannot tell which variant this is ({guess_variant(sd)}); pass --arch")
    shapes = {tuple(getattr(VARIANTS[n], f) for f in ARCHITECTURE_FIELDS) for n in names}
    if len(shapes) > 1:
        raise WeightsError(
            f"{source}: the keys fit several architectures ({', '.join(names)}) that differ in what the file cannot "
            "show (e.g. attention heads); pass --arch"
        )
    return VARIANTS[names[0]]
