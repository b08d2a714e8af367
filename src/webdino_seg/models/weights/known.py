"""Looking up the registered backbone families (see `families`); importing this registers the built-in ones."""

from __future__ import annotations

from ..variants import BackboneConfig
from . import dinov2, dinov3  # noqa: F401  (each registers its family when imported)
from .errors import StateDict, WeightsError
from .families import FAMILIES, Family


def family_of(cfg: BackboneConfig) -> Family:
    """The family of a variant; an unknown one is an error naming the known ones."""
    if cfg.family not in FAMILIES:
        raise ValueError(f"{cfg.name}: unknown backbone family {cfg.family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[cfg.family]


def detect(sd: StateDict) -> tuple[Family, str]:
    """The family a state dict belongs to and its format name, the fallback family last."""
    for family in sorted(FAMILIES.values(), key=lambda f: f.fallback):
        fmt = family.detect(sd)
        if fmt is not None:
            return family, fmt
    raise WeightsError("no backbone family recognises these keys")


def owner(sd: StateDict) -> Family:
    """The family an official-named state dict belongs to (the fallback one when no other claims it)."""
    ordered = sorted(FAMILIES.values(), key=lambda f: f.fallback)
    return next((f for f in ordered if f.owns(sd)), ordered[-1])
