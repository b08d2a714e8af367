"""``labelme``: LabelMe JSON files (``imagePath``, ``imageHeight``, ``imageWidth`` and ``shapes``, each with a
``label``, ``points`` and a ``shape_type``: polygon, rectangle or circle), as github.com/wkentaro/labelme
writes them, one per image beside it.

Classes are background (0) and then `class_names` or the labels found, sorted. Shapes are drawn in file
order, later over earlier; lines and points have no area and are left out (counted in a note).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...utils.safetext import cut
from ..datasets import DataError
from ..images import ImageError, upright_size
from ..labels import Classes
from .shapes import fill_polygons, points_problem
from .writer import Example

AREA_SHAPES = {"polygon": 3, "rectangle": 2, "circle": 2}  # with the points each needs
NO_AREA = ("line", "linestrip", "point", "points")


def _kind(shape: dict) -> str:
    """A shape's type (LabelMe leaves it out for polygons in old files)."""
    return shape.get("shape_type") or "polygon"


def _load(path: Path) -> dict:
    """The LabelMe file at `path`, every field and shape checked; a `DataError` naming it and the shape."""
    try:
        data = json.loads(path.read_text())
        height, width, image, shapes = data["imageHeight"], data["imageWidth"], data["imagePath"], data["shapes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a LabelMe file ({type(err).__name__}: {err})") from None
    if not all(type(v) is int and v > 0 for v in (height, width)):
        raise DataError(f"{path}: imageHeight {cut(height, 30)} and imageWidth {cut(width, 30)} must be positive "
                        "integers")  # fmt: skip
    if not isinstance(image, str) or not isinstance(shapes, list):
        raise DataError(f"{path}: imagePath must be a file name and shapes a list")
    for number, shape in enumerate(shapes, 1):
        where = f"{path}: shape {number}"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise DataError(f"{where} has no label (a string)")
        kind = _kind(shape)
        if kind in NO_AREA:
            continue
        if kind not in AREA_SHAPES:
            raise DataError(f"{where} ({shape['label']}): shape_type {cut(kind, 30)} is not one of "
                            f"{', '.join([*AREA_SHAPES, *NO_AREA])}")  # fmt: skip
        problem = points_problem(shape.get("points"), width, height, AREA_SHAPES[kind])
        if problem:
            raise DataError(f"{where} ({shape['label']}, {kind}): {problem}")
    return data


def _draw(data: dict, index: dict[str, int]) -> np.ndarray:
    import cv2

    mask = np.zeros((int(data["imageHeight"]), int(data["imageWidth"])), np.uint8)
    for shape in data["shapes"]:
        kind = _kind(shape)
        if kind in NO_AREA:
            continue
        points, value = np.asarray(shape["points"], dtype=np.float64), index[shape["label"]]
        if kind == "polygon":
            fill_polygons(mask, [points], value)
        elif kind == "rectangle":
            (x0, y0), (x1, y1) = points[:2]
            fill_polygons(mask, [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])], value)
        elif kind == "circle":
            (cx, cy), edge = points[0], points[1]
            radius = round(float(np.hypot(*(edge - points[0]))))
            cv2.circle(mask, (round(float(cx)), round(float(cy))), radius, int(value), -1)
    return mask


def _checked_image(path: Path, data: dict) -> Path:
    """The image `data` annotates, its upright size checked against the one declared."""
    image = path.parent / data["imagePath"]
    try:
        size = upright_size(image)
    except ImageError as err:
        raise DataError(f"{path}: imagePath {data['imagePath']}: {err}") from None
    if size != (data["imageWidth"], data["imageHeight"]):
        raise DataError(f"{path}: declares {data['imageWidth']}x{data['imageHeight']}, the image {image} is "
                        f"{size[0]}x{size[1]} upright")  # fmt: skip
    return image


def read_labelme(source: Path, class_names: list[str] | None = None) -> tuple[list[Example], Classes, int]:
    """The examples of every LabelMe JSON in `source`, the classes, and how many shapes without area were left
    out."""
    files = sorted(source.glob("*.json"))
    if not files:
        raise DataError(f"{source}: no LabelMe .json files")
    records = {path: _load(path) for path in files}
    labels = sorted({s["label"] for data in records.values() for s in data["shapes"]})
    names = class_names or ["background", *labels]
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise DataError(f"{source}: label(s) {unknown} are not among --class-names {names}")
    index = {name: i for i, name in enumerate(names)}
    skipped = sum(_kind(s) in NO_AREA for d in records.values() for s in d["shapes"])
    examples = [Example(_checked_image(path, data), lambda d=data: _draw(d, index), None)
                for path, data in records.items()]  # fmt: skip
    return examples, Classes(tuple(names)), skipped
