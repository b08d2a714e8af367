"""Parts both ViT families are built from: patch embedding, MLP, layer scale, image-size checks, and the
official `get_intermediate_layers` output split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .sizes import check_image_size

__all__ = ["LayerScale", "Mlp", "PatchEmbed", "check_image_size", "fold_layer_scales", "split_layers", "wanted_layers"]


def wanted_layers(n: int | Sequence[int], depth: int) -> set[int]:
    """Block indices for `get_intermediate_layers`: the last `n`, or the indices in `n`."""
    return set(range(depth - n, depth)) if isinstance(n, int) else set(n)


def split_layers(
    outputs: list[torch.Tensor],
    wanted: set[int],
    depth: int,
    *,
    image: torch.Tensor,
    patch_size: int,
    prefix: int,
    norm: nn.Module | None,
    reshape: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Collected block outputs (B, prefix + patches, D) -> (patch tokens, class tokens, extra tokens), each
    normed by `norm` when given, patch tokens as (B, D, H/p, W/p) grids with `reshape` (the official API)."""
    if len(outputs) != len(wanted):
        raise ValueError(f"requested layers {sorted(wanted)} but the model has {depth} blocks")
    if norm is not None:
        outputs = [norm(out) for out in outputs]
    class_tokens = [out[:, 0] for out in outputs]
    extra_tokens = [out[:, 1:prefix] for out in outputs]
    patches = [out[:, prefix:] for out in outputs]
    if reshape:
        b, _, height, width = image.shape
        hp, wp = height // patch_size, width // patch_size
        patches = [out.reshape(b, hp, wp, -1).permute(0, 3, 1, 2).contiguous() for out in patches]
    return patches, class_tokens, extra_tokens


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p * W/p, D)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """The plain GELU MLP of the smaller DINOv2 models."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    """Element-wise learned scale of a residual branch."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


@torch.no_grad()
def fold_layer_scales(blocks: nn.ModuleList) -> int:
    """Fold each block's LayerScales into the last linear layer of the branch they scale (``ls1`` into the
    attention's output projection, ``ls2`` into the FFN's last layer), so a frozen model makes one element-wise
    pass fewer per branch; the LayerScales become identities. Returns how many were folded. Exact in real
    numbers; in floating point the folded weights round once, where the unfolded model rounds the product."""
    folded = 0
    for block in blocks:
        for name, branch in (("ls1", block.attn), ("ls2", block.mlp)):
            scale = getattr(block, name)
            if not isinstance(scale, LayerScale):
                continue
            last = [m for m in branch.modules() if isinstance(m, nn.Linear)][-1]  # registered in the order applied
            if last.out_features != scale.gamma.numel():
                raise ValueError(
                    f"cannot fold {name}: the branch's last linear layer gives {last.out_features} "
                    f"values, the scale has {scale.gamma.numel()}"
                )
            last.weight.mul_(scale.gamma[:, None].to(last.weight.dtype))
            if last.bias is not None:
                last.bias.mul_(scale.gamma.to(last.bias.dtype))
            setattr(block, name, nn.Identity())
            folded += 1
    return folded
