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

from ..datasets import DataError
from ..labels import Classes
from .shapes import fill_polygons
from .writer import Example

AREA_SHAPES = ("polygon", "rectangle", "circle")


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        int(data["imageHeight"]), int(data["imageWidth"]), data["imagePath"], list(data["shapes"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a LabelMe file ({type(err).__name__}: {err})") from None
    return data


def _draw(data: dict, index: dict[str, int], where: Path) -> np.ndarray:
    import cv2

    mask = np.zeros((int(data["imageHeight"]), int(data["imageWidth"])), np.uint8)
    for shape in data["shapes"]:
        kind, points = shape.get("shape_type") or "polygon", np.asarray(shape["points"], dtype=np.float64)
        value = index[shape["label"]]
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
    skipped = sum(s.get("shape_type", "polygon") not in AREA_SHAPES for d in records.values() for s in d["shapes"])
    examples = [
        Example((path.parent / data["imagePath"]), lambda d=data, p=path: _draw(d, index, p), None)
        for path, data in records.items()
    ]
    return examples, Classes(tuple(names)), skipped
