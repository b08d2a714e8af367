"""``yolo``: Ultralytics YOLO segmentation (``data.yaml`` with ``path``, ``train``, ``val`` and ``names``; one
``labels/.../<stem>.txt`` per image, a line ``class x1 y1 x2 y2 ...`` per object, coordinates normalised to
0-1), as docs.ultralytics.com/datasets/segment/ describes it. A line with four numbers is a box.

YOLO class k becomes class k + 1 (0 is background); objects are drawn in line order, later over earlier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ...utils import yamlfile
from ...utils.safetext import clip, cut
from ..datasets import DataError
from ..images import IMAGE_SUFFIXES, upright_size
from ..labels import Classes
from .readers import Source, register
from .shapes import fill_polygons, points_problem
from .writer import Example


def _label_file(image: Path) -> Path:
    parts = list(image.parts)
    at = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    if at is None:
        return image.with_suffix(".txt")
    parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


def _objects(label: Path, count: int) -> list[tuple[int, np.ndarray]]:
    """The (class, polygon in 0-1 units) of each line of `label`, every line checked: a known class, an even
    number of finite coordinates near the image (a box of four is turned into its polygon)."""
    if not label.exists():  # an image without objects
        return []
    try:
        lines = label.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{label}: cannot read it as text ({err})") from None
    objects = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, coords = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            raise DataError(f"{label}:{number}: not 'class x1 y1 x2 y2 ...' ({clip(line, 60)})") from None
        if not 0 <= cls < count:
            raise DataError(f"{label}:{number}: class {cls}; data.yaml names {count} (0-{count - 1})")
        if len(coords) == 4:  # a box: centre x, centre y, width, height
            cx, cy, bw, bh = coords
            coords = [
                cx - bw / 2,
                cy - bh / 2,
                cx + bw / 2,
                cy - bh / 2,
                cx + bw / 2,
                cy + bh / 2,
                cx - bw / 2,
                cy + bh / 2,
            ]
        problem = points_problem(coords, 1.0, 1.0)
        if problem:
            raise DataError(f"{label}:{number}: {problem} (YOLO coordinates are 0-1 shares of the image)")
        objects.append((cls, np.array(coords).reshape(-1, 2)))
    return objects


def _draw(image: Path, objects: list[tuple[int, np.ndarray]]) -> np.ndarray:
    w, h = upright_size(image)
    mask = np.zeros((h, w), np.uint8)
    for cls, polygon in objects:
        fill_polygons(mask, [polygon * (w, h)], cls + 1)
    return mask


def read_yolo(source: Path) -> tuple[list[Example], Classes]:
    """The train and val images of a YOLO-seg dataset, read from its data.yaml (`source` or inside it)."""
    config_path = source / "data.yaml" if source.is_dir() else source
    try:
        config = yamlfile.load(config_path.read_text())
        names = config["names"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as err:
        raise DataError(f"{config_path}: not a YOLO data.yaml with names ({type(err).__name__}: {err})") from None
    if isinstance(names, dict) and all(type(k) is int for k in names):
        names = [names[k] for k in sorted(names)]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise DataError(f"{config_path}: names {cut(names, 60)} is not a list of class names (or a map 0: name)")
    entries = {
        key: [config[key]] if isinstance(config.get(key), str) else config.get(key) or []
        for key in ("train", "val", "test")
    }
    if not isinstance(config.get("path") or "", str) or not all(
        isinstance(v, list) and all(isinstance(e, str) for e in v) for v in entries.values()
    ):
        raise DataError(f"{config_path}: path, train, val and test must be folder names (or lists of them)")
    root = Path(config.get("path") or ".")
    root = root if root.is_absolute() else config_path.parent / root
    examples = []
    for key, split in (("train", "train"), ("val", "valid"), ("test", "test")):
        for entry in entries[key]:
            folder = root / entry
            if not folder.is_dir():
                raise DataError(f"{config_path}: {key} folder {folder} not found")
            for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                objects = _objects(_label_file(image), len(names))
                examples.append(Example(image, lambda i=image, o=objects: _draw(i, o), split))
    return examples, Classes(("background", *names))


@register("yolo")
def _read(source: Source) -> tuple[list[Example], Classes]:
    """`--format yolo`."""
    return read_yolo(source.path)
