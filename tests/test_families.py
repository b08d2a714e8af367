"""A backbone family is declared beside its own code and nothing else names it: a toy family, registered from
this file alone, is built, loaded, converted both ways and trained for an epoch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from webdino_seg import train
from webdino_seg.models.builder import build_backbone
from webdino_seg.models.dinov2 import DinoVisionTransformer
from webdino_seg.models.variants import VARIANTS
from webdino_seg.models.weights.convert import convert_weights
from webdino_seg.models.weights.families import FAMILIES, Family
from webdino_seg.models.weights.known import family_of


class ToyViT(DinoVisionTransformer):
    """The toy family's model: a Web-DINO ViT under another name (a real family brings its own blocks)."""


def _strip(sd: dict, fmt: str) -> dict:
    prefix = "toy." if fmt == "toy" else "toyhf."
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def _detect(sd: dict) -> str | None:
    if all(k.startswith("toy.") for k in sd):
        return "toy"
    return "toy-hf" if all(k.startswith("toyhf.") for k in sd) else None


TOY = Family(
    name="toy",
    model=ToyViT,
    detect=_detect,
    to_official=_strip,
    owns=lambda sd: False,
    guess=lambda sd: [],
    official_to_hf=lambda sd: {f"toyhf.{k}": v for k, v in sd.items()},
    hf_config=lambda cfg: {"model_type": "toy", "hidden_size": cfg.embed_dim},
    config_from_hf=lambda config, base: base,
    base_variant="toy-tiny",
    for_file=lambda sd, cfg: {f"toy.{k}": v for k, v in sd.items()},
)
CONFIG = dataclasses.replace(VARIANTS["webdino-tiny"], name="toy-tiny", family="toy", url=None, hub_id=None)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The toy family and its variant registered for this test only; a weights file in its own key format."""
    monkeypatch.setitem(FAMILIES, "toy", TOY)
    monkeypatch.setitem(VARIANTS, "toy-tiny", CONFIG)
    model = build_backbone(CONFIG, None, seed=1)
    path = tmp_path / "toy.pth"
    torch.save({f"toy.{k}": v for k, v in model.state_dict().items()}, path)
    return path


def test_a_family_registered_from_outside_builds_loads_converts_and_trains(toy: Path, small: Path, tmp_path: Path):
    model = build_backbone(CONFIG, toy)
    assert type(model) is ToyViT and family_of(CONFIG) is TOY
    reference = build_backbone(CONFIG, None, seed=1)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    hf = tmp_path / "hf"
    assert convert_weights(toy, hf, "hf", CONFIG) == "toy"
    back = tmp_path / "back.pth"
    assert convert_weights(hf / "model.safetensors", back, "official", CONFIG) == "toy-hf"
    assert torch.load(back, weights_only=True).keys() == torch.load(toy, weights_only=True).keys()
    run = train(
        tiny_config(small, tmp_path / "run", arch="toy-tiny", weights=str(back), epochs=1, imgsz=(56, 56)),
        log=lambda *_: None,
    )
    assert (run / "best_model_iou.pth").exists()


def test_an_unknown_family_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone family 'nope'; known: dinov2, dinov3"):
        build_backbone(dataclasses.replace(CONFIG, family="nope"))
