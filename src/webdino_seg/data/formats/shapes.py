"""Drawing annotation shapes into label maps: polygons, and COCO's run-length encoding."""

from __future__ import annotations

import numpy as np


def fill_polygons(mask: np.ndarray, polygons: list[np.ndarray], value: int) -> None:
    """Fill each polygon ((N, 2) pixel x, y) with `value` in place; later calls draw over earlier ones."""
    import cv2

    pts = [np.round(np.asarray(p, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2) for p in polygons]
    pts = [p for p in pts if len(p) >= 3]  # fewer than 3 points enclose nothing
    if pts:
        cv2.fillPoly(mask, pts, int(value))


def rle_decode(rle: dict) -> np.ndarray:
    """A COCO RLE (``{"size": [h, w], "counts": [...] or "compressed string"}``) as an (h, w) bool mask.

    Counts alternate background and foreground runs over the pixels in column-major order; the
    compressed form is COCO's LEB128-like string (pycocotools' ``rleFrString``, described in its
    ``maskApi.c``), decoded here so the package needs no compiled dependency.
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _counts_from_string(counts.encode() if isinstance(counts, str) else counts)
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in counts:
        run = int(run)
        if value:
            flat[pos : pos + run] = True
        pos += run
        value = not value
    if pos != h * w:
        raise ValueError(f"RLE counts cover {pos} pixels, the mask has {h * w}")
    return flat.reshape(w, h).T


def _counts_from_string(data: bytes) -> list[int]:
    counts: list[int] = []
    i = 0
    while i < len(data):
        value, shift, more = 0, 0, True
        while more:
            c = data[i] - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            i += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts
