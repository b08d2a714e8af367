"""``folders``: an images folder and a label-map folder per split, as CamVid's SegNet release stores it
(``train/`` + ``trainannot/``, ``val/`` + ``valannot/``, ``test/`` + ``testannot/``), or ``<split>_images/`` +
``<split>_masks/``, ``images/<split>/`` + ``masks/<split>/`` (or ``labels/<split>/``), or one flat ``images/`` +
``masks/``."""

from __future__ import annotations

from pathlib import Path

from ..datasets import DataError, find_pairs
from ..images import mask_values, read_mask
from ..labels import Coding
from .writer import Example

SPLITS = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}
PATTERNS = (("{s}", "{s}annot"), ("{s}_images", "{s}_masks"), ("{s}_images", "{s}_labels"), ("images/{s}", "masks/{s}"),
            ("images/{s}", "labels/{s}"), ("{s}/images", "{s}/masks"))  # fmt: skip


def find_splits(root: Path) -> list[tuple[str | None, Path, Path]]:
    """(split or None, images folder, label folder) for every split folder pair found under `root`."""
    found = []
    for name, split in SPLITS.items():
        for images, masks in PATTERNS:
            img_dir, mask_dir = root / images.format(s=name), root / masks.format(s=name)
            if img_dir.is_dir() and mask_dir.is_dir() and img_dir != mask_dir:
                found.append((split, img_dir, mask_dir))
                break
    if not found and (root / "images").is_dir() and (root / "masks").is_dir():
        found.append((None, root / "images", root / "masks"))
    if not found:
        raise DataError(f"{root}: no image and label folders found; expected train/ + trainannot/ (and val/ + "
                        "valannot/), train_images/ + train_masks/, images/train/ + masks/train/, or images/ + masks/")
    return found


def read_folders(root: Path, coding: Coding, num_classes: int | None) -> tuple[list[Example], int]:
    """The examples of every split (masks read through `coding`), and the class count (given, or one more than
    the largest class id stored)."""
    found = find_splits(root)
    pairs = [(split, image, mask) for split, imgs, masks in found for image, mask in find_pairs(imgs, masks)]
    if num_classes is None:
        values = mask_values([m for _, _, m in pairs]) - {coding.ignore_index}
        num_classes = max(values, default=0) + 1 - int(coding.reduce_labels)
    examples = [
        Example(image, lambda m=mask: read_mask(m, "ids", num_classes, coding), split) for split, image, mask in pairs
    ]
    return examples, num_classes

