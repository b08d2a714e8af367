"""``yolo``: Ultralytics YOLO segmentation (``data.yaml`` with ``path``, ``train``, ``val`` and ``names``; one
``labels/.../<stem>.txt`` per image, a line ``class x1 y1 x2 y2 ...`` per object, coordinates normalised to
0-1), as docs.ultralytics.com/datasets/segment/ describes it. A line with four numbers is a box.

YOLO class k becomes class k + 1 (0 is background); objects are drawn in line order, later over earlier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ...utils import yamlfile
from ..datasets import DataError
from ..images import IMAGE_SUFFIXES
from ..labels import Classes
from .shapes import fill_polygons
from .writer import Example


def _label_file(image: Path) -> Path:
    parts = list(image.parts)
    at = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    if at is None:
        return image.with_suffix(".txt")
    parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


def _draw(image: Path, label: Path, count: int) -> np.ndarray:
    with Image.open(image) as img:
        w, h = img.size
    mask = np.zeros((h, w), np.uint8)
    if not label.exists():  # an image without objects
        return mask
    for number, line in enumerate(label.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, coords = int(fields[0]), np.array(fields[1:], dtype=np.float64)
        except ValueError:
            raise DataError(f"{label}:{number}: not 'class x1 y1 x2 y2 ...'") from None
        if not 0 <= cls < count or len(coords) % 2 or len(coords) < 4:
            raise DataError(f"{label}:{number}: class {cls} of {count}, or an odd number of coordinates")
        if len(coords) == 4:  # a box: centre x, centre y, width, height
            cx, cy, bw, bh = coords
            coords = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2,
                               cx - bw / 2, cy + bh / 2])  # fmt: skip
        fill_polygons(mask, [coords.reshape(-1, 2) * (w, h)], cls + 1)
    return mask


def read_yolo(source: Path) -> tuple[list[Example], Classes]:
    """The train and val images of a YOLO-seg dataset, read from its data.yaml (`source` or inside it)."""
    config_path = source / "data.yaml" if source.is_dir() else source
    try:
        config = yamlfile.load(config_path.read_text())
        names = config["names"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise DataError(f"{config_path}: not a YOLO data.yaml with names ({type(err).__name__}: {err})") from None
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    root = Path(config.get("path") or ".")
    root = root if root.is_absolute() else config_path.parent / root
    examples = []
    for key, split in (("train", "train"), ("val", "valid")):
        for entry in [config[key]] if isinstance(config.get(key), str) else config.get(key) or []:
            folder = root / entry
            if not folder.is_dir():
                raise DataError(f"{config_path}: {key} folder {folder} not found")
            for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                draw = lambda i=image: _draw(i, _label_file(i), len(names))  # noqa: E731
                examples.append(Example(image, draw, split))
    return examples, Classes(("background", *names))
