"""Strict loading: backbone weights from any source and format into a model, checked key by key and shape by
shape before anything is copied."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import StateDict, WeightsError, few
from .formats import guess_variant, to_official
from .known import family_of
from .reader import read_weights


def check_state_dict(model: nn.Module, sd: StateDict, fmt: str, source: str) -> None:
    """Raise a `WeightsError` unless `sd` has exactly `model`'s keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if not (missing or unexpected or wrong):
        return
    lines = [f"{source}: cannot load {fmt} checkpoint strictly into {getattr(model, 'cfg', None) and model.cfg.name}:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s): {few(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): {few(unexpected)}")
    if wrong:
        lines.append(f"  {len(wrong)} shape mismatch(es) (file vs model): {few(wrong, 3)}")
    if wrong or missing:
        guess = guess_variant(sd)
        if guess:
            lines.append(f"  the file looks like {guess}")
    raise WeightsError("\n".join(lines))


def check_finite(sd: StateDict, source: str) -> None:
    """Raise a `WeightsError` naming the tensors that hold NaN or infinite values."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(
            f"{source}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. {few(bad, 3)}; the file is damaged "
            "or was saved from a diverged run: get the weights again"
        )


def check_dtypes(model: nn.Module, sd: StateDict, source: str) -> None:
    """Raise a `WeightsError` naming the tensors that are not floating point where the model's are (an int8 or
    int64 tensor is a quantized or damaged file, never weights to load as they are)."""
    expected = model.state_dict()
    bad = [
        f"{k} ({str(v.dtype).removeprefix('torch.')})"
        for k, v in sd.items()
        if k in expected and expected[k].is_floating_point() and not v.is_floating_point()
    ]
    if bad:
        raise WeightsError(
            f"{source}: {len(bad)} tensor(s) are not floating point, e.g. {few(bad, 3)}; the file is "
            "quantized or damaged, not the variant's weights"
        )


def load_backbone_weights(model: nn.Module, source: str | Path) -> dict:
    """Load weights from any supported source into `model` strictly; return what was loaded from where."""
    path, raw = read_weights(source)
    sd, fmt = to_official(raw)
    if getattr(model, "cfg", None) is not None:  # what the official file leaves out (DINOv3's buffers)
        sd = family_of(model.cfg).complete(sd, model.cfg)
    if all(v.is_floating_point() for v in sd.values()):
        ref = next(iter(model.parameters()))
        sd = {k: v.to(ref.dtype) for k, v in sd.items()}
    check_state_dict(model, sd, fmt, str(path))
    check_dtypes(model, sd, str(path))
    check_finite(sd, str(path))
    model.load_state_dict(sd, strict=True, assign=any(p.is_meta for p in model.parameters()))
    return {"source": str(source), "path": str(path), "format": fmt}
