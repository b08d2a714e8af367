"""Writing an imported dataset: ``train_images/ train_masks/ valid_images/ valid_masks/`` (masks as PNGs of
class ids, 255 = ignore) and ``classes.json``, built beside the output folder and renamed into place."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ...utils.files import publish
from ...utils.metrics import VOID
from ...utils.outputs import OutputError, outside
from ..datasets import DataError
from ..images import ImageError, upright_size
from ..labels import CLASSES_FILE, Classes, write_classes_file


@dataclass
class Example:
    """One image to import: where it is, how to make its label map, and its split if the format gives one."""

    image: Path
    mask: Callable[[], np.ndarray]  # (H, W) uint8 class ids, 255 ignore
    split: str | None = None  # "train", "valid", or None: decided by the seeded split
    name: str | None = None  # file name in the output (default: the image's)


def check_out(out: Path, *sources: Path) -> None:
    """Refuse an output folder that already holds something (nothing of the user's is ever replaced) or lies
    inside a source folder."""
    try:
        outside(out, sources)
    except OutputError as err:
        raise DataError(str(err)) from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: output folder exists and is not empty; choose a new --out")


def check_names(examples: list[Example]) -> None:
    """Refuse two examples that would be written under one name (``a/x.jpg`` and ``b/x.jpg``; ``x.jpg`` and
    ``x.png``, whose masks are both ``x.png``), naming both."""
    seen: dict[str, Path] = {}
    for example in examples:
        name = example.name or example.image.name
        for key in (name.lower(), Path(name).stem.lower() + ".png"):
            first = seen.setdefault(key, example.image)
            if first != example.image:
                raise DataError(f"{first} and {example.image}: both would be imported as {name} (or its mask "
                                f"{Path(name).stem}.png); give each image its own file name")  # fmt: skip


def assign_splits(examples: list[Example], valid_fraction: float, seed: int) -> None:
    """Give the examples without a split one: a seeded share `valid_fraction` of them goes to valid."""
    loose = sorted((e for e in examples if e.split is None), key=lambda e: e.name or e.image.name)
    if not loose:
        return
    if not 0 < valid_fraction < 1:
        raise DataError(f"--valid-fraction {valid_fraction} must be between 0 and 1 (e.g. 0.15)")
    random.Random(seed).shuffle(loose)
    n_valid = min(len(loose) - 1, max(1, round(len(loose) * valid_fraction))) if len(loose) > 1 else 0
    for i, example in enumerate(loose):
        example.split = "valid" if i < n_valid else "train"


def write_dataset(out: Path, examples: Iterable[Example], classes: Classes, source: str, record: dict) -> dict:
    """Write the layout and ``classes.json`` into a folder beside `out`, then rename it to `out`; nothing is left
    half-written on failure. Returns how many pairs went to each split."""
    examples = list(examples)
    if not examples:
        raise DataError(f"{source}: no images to import")
    check_names(examples)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        counts = {"train": 0, "valid": 0}
        for split in counts:
            (staging / f"{split}_images").mkdir()
            (staging / f"{split}_masks").mkdir()
        for example in tqdm(examples, desc="importing", unit="img"):
            _write_one(staging, example, len(classes.names))
            counts[example.split] += 1
        write_classes_file(staging, classes, VOID, f"; imported from {source}")
        splits = {s: sorted((e.name or e.image.name) for e in examples if e.split == s) for s in counts}
        (staging / "split.json").write_text(json.dumps(record | splits, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        publish(staging, out, directory=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts | {"out": str(out), "classes": len(classes.names), "classes_file": str(out / CLASSES_FILE)}


def _write_one(root: Path, example: Example, num_classes: int) -> None:
    name = example.name or example.image.name
    if not example.image.is_file():
        raise DataError(f"{example.image}: image not found")
    try:
        size = upright_size(example.image)
    except ImageError as err:
        raise DataError(str(err)) from None
    mask = example.mask()
    if mask.shape != (size[1], size[0]):
        raise DataError(f"{example.image}: image is {size[0]}x{size[1]} (upright) but its labels are "
                        f"{mask.shape[1]}x{mask.shape[0]}")  # fmt: skip
    bad = np.unique(mask[(mask >= num_classes) & (mask != VOID)])
    if bad.size:
        raise DataError(f"{example.image}: label value(s) {bad.tolist()[:8]} beyond the {num_classes} classes")
    shutil.copyfile(example.image, root / f"{example.split}_images" / name)
    Image.fromarray(mask).save(root / f"{example.split}_masks" / f"{Path(name).stem}.png")
