"""Drawing annotation shapes into label maps (polygons, and COCO's run-length encoding), and checking them
first: every coordinate finite and near the image, every run-length well formed. The checks return what is
wrong, in words, so that each format can name its file and record."""

from __future__ import annotations

import math

import numpy as np

from ...utils.safetext import cut

# how far outside the image a coordinate may lie, as a share of the image's size (a polygon dragged past the
# edge is common and is clipped by drawing; one a whole image away is a unit or parsing mistake)
MARGIN = 0.5


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def points_problem(points: object, width: float, height: float, least: int = 3) -> str | None:
    """What is wrong with `points` (``[[x, y], ...]`` or a flat ``[x, y, x, y, ...]``) as a shape of at least
    `least` points on a `width` x `height` image, or None: numbers, finite, within `MARGIN` of the image."""
    if not isinstance(points, (list, tuple)) or not points:
        return f"points {cut(points)} are not a list of coordinates"
    pairs = isinstance(points[0], (list, tuple))
    if pairs and any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in points):
        return "points are not all [x, y] pairs"
    flat = [v for p in points for v in p] if pairs else list(points)
    if not all(_is_number(v) for v in flat):
        return f"coordinates {cut(flat)} are not all numbers"
    if len(flat) % 2:
        return f"an odd number of coordinates ({len(flat)})"
    if len(flat) < 2 * least:
        return f"{len(flat) // 2} point(s); a shape of this kind needs at least {least}"
    if not all(math.isfinite(v) for v in flat):
        return "a coordinate is not finite (NaN or infinity)"
    xs, ys = flat[0::2], flat[1::2]
    for axis, values, size in (("x", xs, width), ("y", ys, height)):
        low, high = -MARGIN * size, (1 + MARGIN) * size
        out = next((v for v in values if not low <= v <= high), None)
        if out is not None:
            return (
                f"{axis} = {out:g} lies outside the image (0-{size:g}) by more than half its size; are the "
                "coordinates in this format's unit?"
            )
    return None


def fill_polygons(mask: np.ndarray, polygons: list[np.ndarray], value: int) -> None:
    """Fill each polygon ((N, 2) pixel x, y, checked by `points_problem`) with `value` in place: their union (as
    COCO's several polygons of one object), each drawn alone, later calls over earlier ones."""
    import cv2

    for polygon in polygons:
        pts = np.round(np.asarray(polygon, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)
        if len(pts) >= 3:  # fewer than 3 points enclose nothing
            cv2.fillPoly(mask, [pts], int(value))  # one at a time: together, cv2 would cut their overlap out


def rle_problem(rle: object, height: int, width: int) -> str | None:
    """What is wrong with `rle` as a COCO run-length encoding of a `height` x `width` mask, or None: a ``size`` of
    that image, and ``counts`` (a list, or COCO's compressed string) of non-negative runs covering it exactly."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        return "an RLE segmentation needs counts and size"
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(type(v) is int for v in size)):
        return f"RLE size {cut(size)} is not [height, width]"
    if list(size) != [height, width]:
        return f"RLE size {size[0]}x{size[1]} (h x w) is not the image's {height}x{width}"
    try:
        counts = _counts(rle["counts"])
    except ValueError as err:
        return str(err)
    if any(c < 0 for c in counts):
        return "an RLE run is negative"
    if sum(counts) != height * width:
        return f"RLE runs cover {sum(counts)} pixels; the image has {height * width}"
    return None


def _counts(counts: object) -> list[int]:
    """The runs of an RLE's ``counts`` (a list of integers, or the compressed string)."""
    if isinstance(counts, (str, bytes)):
        return _counts_from_string(counts.encode() if isinstance(counts, str) else counts)
    if isinstance(counts, list) and all(type(c) is int for c in counts):
        return counts
    raise ValueError(f"RLE counts {cut(counts)} are neither a list of integers nor a compressed string")


def rle_decode(rle: dict) -> np.ndarray:
    """A COCO RLE (``{"size": [h, w], "counts": [...] or "compressed string"}``, checked by `rle_problem`) as an
    (h, w) bool mask.

    Counts alternate background and foreground runs over the pixels in column-major order; the
    compressed form is COCO's LEB128-like string (pycocotools' ``rleFrString``, described in its
    ``maskApi.c``), decoded here so the package needs no compiled dependency.
    """
    h, w = (int(v) for v in rle["size"])
    counts = _counts(rle["counts"])
    if any(c < 0 for c in counts) or sum(counts) != h * w:  # never drawn unchecked
        raise ValueError(f"RLE runs {cut(counts)} do not cover the {h}x{w} mask")
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in counts:
        if value:
            flat[pos : pos + run] = True
        pos += run
        value = not value
    return flat.reshape(w, h).T


def _counts_from_string(data: bytes) -> list[int]:
    counts: list[int] = []
    i = 0
    while i < len(data):
        value, shift, more = 0, 0, True
        while more:
            if i >= len(data):
                raise ValueError("RLE counts string ends inside a number (truncated)")
            c = data[i] - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE counts string has {chr(data[i])!r}, outside COCO's alphabet ('0' to 'o')")
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            i += 1
            shift += 1
            if shift > 13:  # 65 bits: no real run is that long
                raise ValueError("RLE counts string holds a number too long to be a run")
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


INT_MIN = -(2**31)  # what x86's float-to-int conversion gives for NaN, as pycocotools' C code meets it


def _c_int(values: np.ndarray) -> np.ndarray:
    """C's ``(int)`` of doubles: truncation toward zero, NaN as x86 converts it (INT_MIN)."""
    out = np.full(values.shape, INT_MIN, dtype=np.int64)
    finite = np.isfinite(values)
    out[finite] = np.trunc(values[finite]).astype(np.int64)
    return out


def coco_polygon_runs(xy: np.ndarray, height: int, width: int) -> list[int]:
    """The RLE counts pycocotools' ``rleFrPoly`` (maskApi.c) gives one polygon ((N, 2) x, y): the boundary walked
    on a 5x finer grid, its y-crossings taken back to pixel columns, each crossing toggling the column below it.
    Ported step for step, integer and float operations as the C code does them, so masks equal COCO's own."""
    scale, h, w = 5.0, height, width
    x = _c_int(scale * xy[:, 0] + 0.5)
    y = _c_int(scale * xy[:, 1] + 0.5)
    x, y = np.append(x, x[0]), np.append(y, y[0])
    us, vs = [], []
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(len(xy)):
            xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
            dx, dy = abs(xe - xs), abs(ys - ye)
            flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
            if flip:
                xs, xe, ys, ye = xe, xs, ye, ys
            long, short_start = (dx, ys) if dx >= dy else (dy, xs)
            step = np.float64(ye - ys if dx >= dy else xe - xs) / np.float64(long)  # 0/0 is NaN, as in C
            d = np.arange(long + 1)
            t = long - d if flip else d
            along = t + (xs if dx >= dy else ys)
            across = _c_int(short_start + step * t + 0.5)
            us.append(along if dx >= dy else across)
            vs.append(across if dx >= dy else along)
    u, v = np.concatenate(us), np.concatenate(vs)
    moved = u[1:] != u[:-1]
    u0, u1, v0, v1 = u[:-1][moved], u[1:][moved], v[:-1][moved], v[1:][moved]
    xd = (np.where(u1 < u0, u1, u1 - 1).astype(np.float64) + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = (np.where(v1 < v0, v1, v0).astype(np.float64)[keep] + 0.5) / scale - 0.5
    yd = np.ceil(np.clip(yd, 0, h))
    a = np.sort(np.append(xd[keep].astype(np.int64) * h + yd.astype(np.int64), h * w))
    a = np.diff(a, prepend=0)
    counts, j = [int(a[0])], 1
    while j < len(a):  # zero-length runs merge the next run into the one before
        if a[j] > 0:
            counts.append(int(a[j]))
            j += 1
        else:
            j += 1
            if j < len(a):
                counts[-1] += int(a[j])
                j += 1
    return counts


def fill_coco_polygons(mask: np.ndarray, polygons: list[np.ndarray], value: int) -> None:
    """Fill the union of an object's COCO polygons ((N, 2) x, y each) with `value` in place, pixel for pixel as
    pycocotools' ``annToMask`` draws them (`coco_polygon_runs`)."""
    h, w = mask.shape
    for polygon in polygons:
        polygon = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if len(polygon) >= 3:
            mask[rle_decode({"size": [h, w], "counts": coco_polygon_runs(polygon, h, w)})] = value
