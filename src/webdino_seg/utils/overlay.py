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


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """The image with a white strip on top holding `text` in black; the strip's height depends only on the
    image's width, so captioned images of one width line up side by side."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.45, min(1.2, image.shape[1] / 700))
    thickness = max(1, round(scale * 1.5))
    (_, height), base = cv2.getTextSize("Ag", font, scale, thickness)
    fit = scale
    while cv2.getTextSize(text, font, fit, thickness)[0][0] > image.shape[1] - 12 and fit > 0.3:  # long names
        fit *= 0.9
    strip = np.full((height + base + 12, image.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (6, height + 6), font, fit, (0, 0, 0), thickness, cv2.LINE_AA)
    return np.concatenate([strip, image], 0)
