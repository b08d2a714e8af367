"""Shared test fixtures: the golden tiny-model files and the real Penn-Fudan data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(os.environ.get("WEBDINO_SEG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4}

torch.set_num_threads(min(2, torch.get_num_threads()))


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        if os.environ.get("WEBDINO_SEG_REQUIRE_DATA") == "1":
            pytest.fail(f"{path} is required under CI (WEBDINO_SEG_REQUIRE_DATA=1) but is missing")
        pytest.skip(f"{path} not present (the full dataset lives in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def pennfudan() -> Path:
    """The original Penn-Fudan release (PNGImages/, PedMasks/)."""
    return _shared("PennFudanPed")


@pytest.fixture(scope="session")
def test_video() -> Path:
    """The real 768x432 H.264 test video."""
    return _shared("videos/people_walking_close.mp4")


@pytest.fixture(scope="session")
def tiny_io() -> dict:
    """Official reference inputs and outputs for the tiny model."""
    return torch.load(FIXTURES / "tiny_io.pt", weights_only=True)
