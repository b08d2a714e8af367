"""``voc``: PASCAL VOC segmentation (``JPEGImages/``, ``SegmentationClass/`` palette PNGs whose 255 border means
ignore, ``ImageSets/Segmentation/train.txt`` and ``val.txt``), as the VOC devkit documents it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..datasets import DataError
from ..labels import Classes
from .readers import Source, register
from .writer import Example

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc_colormap(count: int) -> list[tuple[int, int, int]]:
    """The devkit's colour map: the bits of the class index spread over R, G and B, most significant first."""
    colors = []
    for i in range(count):
        r = g = b = 0
        code = i
        for shift in range(7, -1, -1):
            r, g, b = r | (code & 1) << shift, g | (code >> 1 & 1) << shift, b | (code >> 2 & 1) << shift
            code >>= 3
        colors.append((r, g, b))
    return colors


def _root(source: Path) -> Path:
    for root in (source, source / "VOC2012", source / "VOCdevkit" / "VOC2012"):
        if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
            return root
    raise DataError(f"{source}: no JPEGImages/ with SegmentationClass/ beside it (the VOC devkit layout)")


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        if img.mode != "P":
            raise DataError(f"{path}: VOC label maps are palette PNGs, found mode {img.mode}")
        return np.array(img)  # palette indices are the class ids; 255 is the border (ignore)


def read_voc(source: Path) -> tuple[list[Example], Classes]:
    """The examples of the devkit's train and val lists (or of every label map, for the seeded split)."""
    root = _root(source)
    lists = root / "ImageSets" / "Segmentation"
    stems: dict[str, str | None] = {}
    for name, split in (("train.txt", "train"), ("val.txt", "valid"), ("test.txt", "test")):
        if (lists / name).is_file():
            stems.update({s.strip(): split for s in (lists / name).read_text().split() if s.strip()})
    if not stems:
        stems = {p.stem: None for p in sorted((root / "SegmentationClass").glob("*.png"))}
    examples = []
    for stem, split in sorted(stems.items()):
        label = root / "SegmentationClass" / f"{stem}.png"
        if not label.is_file() and split == "test":
            continue  # VOC's public test list comes without label maps: nothing to score
        if not label.is_file():
            raise DataError(f"{label}: listed in {lists} but missing")
        examples.append(Example(root / "JPEGImages" / f"{stem}.jpg", lambda p=label: _mask(p), split))
    return examples, Classes(VOC_CLASSES, tuple(voc_colormap(len(VOC_CLASSES))))


@register("voc")
def _read(source: Source) -> tuple[list[Example], Classes]:
    """`--format voc`."""
    return read_voc(source.path)
