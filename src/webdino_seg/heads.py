"""Decoder heads that turn a (B, D, h, w) token grid into per-class logits on the same grid."""

from __future__ import annotations

import torch
from torch import nn


class SimpleDecoder(nn.Module):
    """The tutorial's head: 3x3 conv to 256 channels, ReLU, 1x1 conv to the classes."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.decode = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decode(features)


HEADS = {"simple": SimpleDecoder}


def head_name(head: nn.Module) -> str:
    """The name `create_head` knows a head by."""
    for name, cls in HEADS.items():
        if type(head) is cls:
            return name
    raise ValueError(f"{type(head).__name__} is not one of the known heads: {', '.join(HEADS)}")


def create_head(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """Build a head by name (``simple``)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}")
    return HEADS[name](in_channels, num_classes)
