"""The backbone families, each declared beside its own code: what the builder, weight loading and conversion need
of a family, so that they name none.

A family registers a `Family` (its model class, how to tell its state dicts from others, and its conversions)
with `register`; `dinov2.py` and `dinov3.py` here do so for Web-DINO/DINOv2 and DINOv3, and `known.py` looks
them up. Adding a family is a module that registers one (and its variants in the table); nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..variants import BackboneConfig
from .errors import StateDict


def _same(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    return dict(sd)


@dataclass(frozen=True)
class Family:
    """What a backbone family brings: `detect` names a state dict's format when it is the family's (else None);
    `to_official` renames it (of that format) to the official un-chunked keys the model loads; `owns` tells an
    official-named state dict of this family; `complete` adds what the official file leaves out (buffers);
    `for_file` writes it as the official factory does (chunked); the Hugging Face side converts both ways."""

    name: str  # BackboneConfig.family
    model: type  # the ViT class, built from a BackboneConfig
    detect: Callable[[StateDict], str | None]
    to_official: Callable[[StateDict, str], StateDict]
    owns: Callable[[StateDict], bool]
    guess: Callable[[StateDict], list[str]]  # variants whose shapes an official-named state dict has
    official_to_hf: Callable[[StateDict], StateDict]
    hf_config: Callable[[BackboneConfig], dict]
    config_from_hf: Callable[[dict, BackboneConfig], BackboneConfig]
    base_variant: str  # the variant an HF config.json's numbers are laid over
    hf_keys: tuple[str, ...] = ("hidden_size", "num_hidden_layers", "num_attention_heads")  # config.json needs
    complete: Callable[[StateDict, BackboneConfig], StateDict] = _same
    for_file: Callable[[StateDict, BackboneConfig], StateDict] = _same
    describe_unlisted: Callable[[StateDict], str | None] = lambda sd: None
    fallback: bool = False  # tried last: the family whose official keys are the plain ones


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add `family` (or replace the one of that name); returns it."""
    FAMILIES[family.name] = family
    return family
