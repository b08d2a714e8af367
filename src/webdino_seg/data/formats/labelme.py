"""``labelme``: LabelMe JSON files (``imagePath``, ``imageHeight``, ``imageWidth`` and ``shapes``, each with a
``label``, ``points`` and a ``shape_type``: polygon, rectangle or circle), as github.com/wkentaro/labelme
writes them, one per image beside it.

Classes are background (0) and then `class_names` or the labels found, sorted (labels that differ only in
spaces or case are one class). Shapes are drawn in file order, later over earlier; lines and points have no
area and are left out (counted in a note). An image missing beside its JSON is read from the JSON's embedded
``imageData``; a Windows ``imagePath`` (``..\\images\\a.jpg``) is read as the path it is.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path, PureWindowsPath

import numpy as np

from ...utils.safetext import cut
from ..datasets import DataError
from ..images import ImageError, upright_size
from ..labels import Classes
from .readers import Source, register
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
        raise DataError(
            f"{path}: imageHeight {cut(height, 30)} and imageWidth {cut(width, 30)} must be positive integers"
        )
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
            raise DataError(
                f"{where} ({shape['label']}): shape_type {cut(kind, 30)} is not one of "
                f"{', '.join([*AREA_SHAPES, *NO_AREA])}"
            )
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


def _checked_image(path: Path, data: dict) -> tuple[Path, bytes | None]:
    """The image `data` annotates (``imagePath`` beside the JSON, a Windows path read as one), or, where that file
    is not there, the image embedded in ``imageData`` (as bytes); its upright size checked against the one
    declared."""
    given = data["imagePath"]
    image = path.parent / (PureWindowsPath(given).as_posix() if "\\" in given else given)
    embedded = None
    if not image.is_file() and isinstance(data.get("imageData"), str):
        try:
            embedded = base64.b64decode(data["imageData"], validate=True)
        except ValueError:
            raise DataError(f"{path}: imageData is not base64 (and imagePath {given} is not there)") from None
        image = path.parent / (image.name or f"{path.stem}.png")
    try:
        size = upright_size(io.BytesIO(embedded) if embedded is not None else image)
    except ImageError as err:
        raise DataError(f"{path}: {'imageData' if embedded is not None else f'imagePath {given}'}: {err}") from None
    if size != (data["imageWidth"], data["imageHeight"]):
        raise DataError(
            f"{path}: declares {data['imageWidth']}x{data['imageHeight']}, the image {image} is "
            f"{size[0]}x{size[1]} upright"
        )
    return image, embedded


def _same_labels(records: dict[Path, dict], log) -> dict[str, str]:
    """Each label as the class it names: labels that differ only in spaces or case (``"Person "``, ``"person"``)
    are one class, under the first spelling in sorted order, said in one line."""
    spellings: dict[str, list[str]] = {}
    for data in records.values():
        for shape in data["shapes"]:
            spellings.setdefault(shape["label"].strip().casefold(), []).append(shape["label"])
    canonical = {}
    for variants in spellings.values():
        unique = sorted(set(variants))
        name = sorted({v.strip() for v in unique})[0]
        if len(unique) > 1:
            log(
                f"note: LabelMe labels {', '.join(map(repr, unique))} differ only in spaces or case: read as one "
                f"class, {name!r}"
            )
        canonical |= {v: name for v in unique}
    return canonical


def read_labelme(source: Path, class_names: list[str] | None = None, log=print) -> tuple[list[Example], Classes, int]:
    """The examples of every LabelMe JSON in `source`, the classes, and how many shapes without area were left
    out."""
    files = sorted(source.glob("*.json"))
    if not files:
        raise DataError(f"{source}: no LabelMe .json files")
    records = {path: _load(path) for path in files}
    canonical = _same_labels(records, log)
    labels = sorted(set(canonical.values()))
    names = class_names or ["background", *labels]
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise DataError(f"{source}: label(s) {unknown} are not among --class-names {names}")
    index = {label: names.index(name) for label, name in canonical.items()}
    skipped = sum(_kind(s) in NO_AREA for d in records.values() for s in d["shapes"])
    examples = []
    for path, data in records.items():
        image, embedded = _checked_image(path, data)
        examples.append(Example(image, lambda d=data: _draw(d, index), None, data=embedded))
    return examples, Classes(tuple(names)), skipped


@register("labelme")
def _read(source: Source) -> tuple[list[Example], Classes]:
    """`--format labelme`; shapes without area are left out, said in one line."""
    examples, classes, skipped = read_labelme(source.path, source.class_names, source.log)
    if skipped:
        source.log(f"note: {skipped} LabelMe shape(s) without area (lines, points) were left out")
    return examples, classes
