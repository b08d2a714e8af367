"""A torchinfo-style layer table for a SegmentationModel, computed on the meta device."""

from __future__ import annotations

import torch
from torch import nn

from .segmentation import SegmentationModel


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _fmt(n: int) -> str:
    return f"{n:,}"


def model_summary(model: SegmentationModel, imgsz: tuple[int, int], batch: int = 1) -> str:
    """Layer table (type, output shape, parameters) and totals for one forward pass at `imgsz`."""
    rows: list[tuple[str, str, int, bool]] = []
    layers: list[tuple[str, nn.Module]] = [("backbone.patch_embed", model.backbone.patch_embed)]
    layers += [(f"backbone.blocks.{i}", blk) for i, blk in enumerate(model.backbone.blocks)]
    layers += [("backbone.norm", model.backbone.norm)]
    layers += [(f"head.{name}", m) for name, m in model.head.named_modules() if not list(m.children())]
    hooks = []
    for name, module in layers:

        def hook(mod: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
            trainable = any(p.requires_grad for p in mod.parameters())
            rows.append((f"{name} ({type(mod).__name__})", str(list(out.shape)), _count(mod), trainable))

        hooks.append(module.register_forward_hook(hook))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(batch, 3, *imgsz, device=device))
    finally:
        for h in hooks:
            h.remove()
    width = max(len(r[0]) for r in rows) + 2
    line = "=" * (width + 40)
    out = [line, f"{'Layer (type)':<{width}}{'Output Shape':<24}{'Param #':>16}", line]
    out += [f"{name:<{width}}{shape:<24}{_fmt(n):>16}" for name, shape, n, _ in rows]
    total = _count(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out += [
        line,
        f"Backbone params: {_fmt(_count(model.backbone))}",
        f"Head params: {_fmt(_count(model.head))}",
        f"Total params: {_fmt(total)}",
        f"Trainable params: {_fmt(trainable)}",
        f"Non-trainable params: {_fmt(total - trainable)}",
        line,
    ]
    return "\n".join(out)
