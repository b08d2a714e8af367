"""Which key convention a state dict uses and which variant it fits, over both families' key tables."""

from __future__ import annotations

from ..variants import VARIANTS, BackboneConfig
from . import dinov2, dinov3
from .errors import StateDict, WeightsError

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
    ``official-dinov3``, ``hf-dinov3``."""
    if dinov3.is_hf(sd):
        return "hf-dinov3"
    if dinov3.is_official(sd):
        return "official-dinov3"
    if dinov2.is_hf(sd):
        return dinov2.hf_version(sd)
    return "official-chunked" if dinov2.is_chunked(sd) else "official"


def to_official(sd: StateDict) -> tuple[StateDict, str]:
    """Convert any supported naming to the official un-chunked one; return it and the detected format."""
    fmt = detect_format(sd)
    if fmt == "hf-dinov3":
        return dinov3.hf_to_official(sd), fmt
    if fmt == "official-dinov3":
        return dict(sd), fmt
    if fmt == "hf-v5":
        sd = dinov2.v5_to_v4(sd)
    if fmt.startswith("hf"):
        return dinov2.hf_to_official(sd), fmt
    return (dinov2.unchunk(sd) if fmt == "official-chunked" else dict(sd)), fmt


def guess_variants(sd: StateDict) -> list[str]:
    """Every variant whose shapes an official-named state dict has (see each family's `guess`)."""
    return dinov3.guess(sd) if dinov3.is_official(sd) else dinov2.guess(sd)


def guess_variant(sd: StateDict) -> str | None:
    """Name the variant whose shapes an official-named state dict has, if any (the first of equals), else
    describe the unlisted model it looks like."""
    names = guess_variants(sd)
    if names:
        return names[0]
    if dinov3.is_official(sd):
        return "an unlisted DINOv3 model"
    return dinov2.describe_unlisted(sd)


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
