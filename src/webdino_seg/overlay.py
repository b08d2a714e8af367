"""Blending class masks over images in clear colours."""

from __future__ import annotations

import numpy as np

# class 0 (background) is left as is; class 1 gets a strong magenta, later classes other distinct colours
PALETTE = np.array(
    [[0, 0, 0], [255, 0, 160], [0, 200, 255], [255, 200, 0], [0, 255, 100], [160, 80, 255], [255, 90, 0]],
    dtype=np.uint8,
)


_LUT = np.full((256, 3), 128, dtype=np.uint8)
_LUT[: len(PALETTE)] = PALETTE


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) class ids to an (H, W, 3) RGB picture (void and unknown ids in grey)."""
    return _LUT[mask]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour of each non-background class over an (H, W, 3) uint8 image."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    out = image.copy()
    fg = mask != 0
    if fg.any():  # work only on the masked pixels: video frames are mostly background
        blended = (1 - alpha) * image[fg].astype(np.float32) + alpha * _LUT[mask[fg]]
        out[fg] = (blended + 0.5).astype(np.uint8)
    return out
