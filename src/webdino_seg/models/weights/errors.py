"""The error every weights path raises, and the state-dict type they pass around."""

from __future__ import annotations

import torch

StateDict = dict[str, torch.Tensor]


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded strictly into the requested backbone."""


def few(keys: list[str], n: int = 5) -> str:
    """The first `n` keys, and how many more there are."""
    shown = ", ".join(keys[:n])
    return f"{shown} (and {len(keys) - n} more)" if len(keys) > n else shown
