"""Which image sizes a ViT takes: multiples of its patch (importable without torch)."""

from __future__ import annotations


def check_image_size(height: int, width: int, patch_size: int = 14) -> None:
    """Raise a ValueError naming the nearest valid sizes unless both sides are multiples of the patch."""
    for side, value in (("height", height), ("width", width)):
        if value < patch_size:
            raise ValueError(
                f"image {side} {value} (size {height}x{width}) must be a positive multiple of the patch size "
                f"{patch_size}, e.g. {patch_size * 46}"
            )
        if value % patch_size:
            low = max(patch_size, value // patch_size * patch_size)
            high = (value // patch_size + 1) * patch_size
            raise ValueError(
                f"image {side} {value} (size {height}x{width}) is not a multiple of the patch size "
                f"{patch_size}; use {low} or {high}"
            )
