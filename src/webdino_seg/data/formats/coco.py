"""``coco``: COCO instance annotations (one JSON: ``images``, ``annotations`` with polygon or RLE
``segmentation``, ``categories``), as described at cocodataset.org/#format-data.

Category ids become classes 1..K in id order (0 is background). Annotations are drawn in file order,
later ones over earlier ones; a crowd region (``iscrowd`` 1) becomes ignore (255) over whatever it covers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...utils.metrics import VOID
from ..datasets import DataError
from ..labels import Classes
from .shapes import fill_polygons, rle_decode
from .writer import Example


def _image_path(file_name: str, folders: list[Path]) -> Path:
    for folder in folders:
        if (folder / file_name).is_file():
            return folder / file_name
    return folders[0] / file_name  # reported as missing when written


def _draw(mask: np.ndarray, annotations: list[dict], index: dict[int, int], where: str) -> np.ndarray:
    for ann in annotations:
        value = VOID if ann.get("iscrowd") else index[ann["category_id"]]
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            fill_polygons(mask, [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg], value)
        elif isinstance(seg, dict):
            region = rle_decode(seg)
            if region.shape != mask.shape:
                raise DataError(f"{where}: annotation {ann.get('id')} has an RLE of size {region.shape}, the image "
                                f"is {mask.shape}")  # fmt: skip
            mask[region] = value
    return mask


def read_coco(source: Path, images: Path | None = None) -> tuple[list[Example], Classes]:
    """The examples of one COCO JSON, images found in `images` (default: beside the JSON, or in images/ there)."""
    try:
        data = json.loads(source.read_text())
        categories = sorted(data["categories"], key=lambda c: c["id"])
        records, annotations = data["images"], data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{source}: not a COCO annotation file ({type(err).__name__}: {err})") from None
    index = {c["id"]: i + 1 for i, c in enumerate(categories)}
    by_image: dict[int, list[dict]] = {}
    for ann in annotations:
        if ann.get("category_id") not in index:
            raise DataError(f"{source}: annotation {ann.get('id')} has category {ann.get('category_id')}, not listed")
        by_image.setdefault(ann["image_id"], []).append(ann)
    folders = [images] if images else [source.parent, source.parent / "images"]
    examples = []
    for rec in records:
        h, w = int(rec["height"]), int(rec["width"])
        anns = by_image.get(rec["id"], [])
        draw = lambda h=h, w=w, anns=anns, name=rec["file_name"]: _draw(  # noqa: E731
            np.zeros((h, w), np.uint8), anns, index, f"{source} ({name})"
        )
        examples.append(Example(_image_path(rec["file_name"], folders), draw, None, Path(rec["file_name"]).name))
    names = ("background", *(c["name"] for c in categories))
    return examples, Classes(names)
