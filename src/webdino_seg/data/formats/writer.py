"""Writing an imported dataset: ``train_images/ train_masks/ valid_images/ valid_masks/`` (masks as PNGs of
class ids, 255 = ignore) and ``classes.json``, built beside the output folder and renamed into place."""

from __future__ import annotations

import io
import json
import os
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
from ..splitrule import SPLITS, check_disjoint, stable_split


@dataclass
class Example:
    """One image to import: where it is, how to make its label map, and its split if the format gives one."""

    image: Path
    mask: Callable[[], np.ndarray]  # (H, W) uint8 class ids, 255 ignore
    split: str | None = None  # "train", "valid", "test", or None: decided by the stable split rule
    name: str | None = None  # file name in the output (default: the image's)
    data: bytes | None = None  # the image file's bytes where they come embedded (LabelMe's imageData), not a file


def check_out(out: Path, *sources: Path, earlier: bool = False) -> dict[str, str]:
    """Refuse an output folder that lies inside a source folder or already holds something (nothing of the
    user's is ever replaced); with `earlier`, a folder holding exactly what an earlier import wrote is taken:
    returns the split of each image it holds (else {})."""
    try:
        outside(out, sources)
    except OutputError as err:
        raise DataError(str(err)) from None
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return {}
    kept = earlier_import(out) if earlier and out.is_dir() else None
    if kept is None:
        raise DataError(f"{out}: output folder exists and is not empty; choose a new --out")
    return kept


def earlier_import(out: Path) -> dict[str, str] | None:
    """The split of each image of an earlier import in `out` (its split.json), or None when `out` holds anything
    else: other files, or images the record does not name."""
    try:
        record = json.loads((out / "split.json").read_text())
        kept = {name: split for split in SPLITS for name in record.get(split, [])}
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    allowed = {"split.json", CLASSES_FILE} | {f"{s}_{kind}" for s in SPLITS for kind in ("images", "masks")}
    if not record.get("format") or any(p.name not in allowed for p in out.iterdir()):
        return None
    for split in SPLITS:
        for kind in ("images", "masks"):
            folder = out / f"{split}_{kind}"
            names = {p.name if kind == "images" else p.stem for p in folder.iterdir()} if folder.is_dir() else set()
            wanted = {n if kind == "images" else Path(n).stem for n, s in kept.items() if s == split}
            if names != wanted:
                return None
    return kept


def check_names(examples: list[Example]) -> None:
    """Refuse two examples that would be written under one name (``a/x.jpg`` and ``b/x.jpg``; ``x.jpg`` and
    ``x.png``, whose masks are both ``x.png``), naming both."""
    seen: dict[str, Path] = {}
    for example in examples:
        name = example.name or example.image.name
        for key in (name.lower(), Path(name).stem.lower() + ".png"):
            first = seen.setdefault(key, example.image)
            if first != example.image:
                raise DataError(
                    f"{first} and {example.image}: both would be imported as {name} (or its mask "
                    f"{Path(name).stem}.png); give each image its own file name"
                )


def assign_splits(
    examples: list[Example], valid_fraction: float, seed: int, kept: dict[str, str] | None = None
) -> None:
    """Give the examples without a split one: those `kept` names (an earlier import's record) keep theirs, the
    others go to valid by the stable rule of `splitrule.stable_split` (a share `valid_fraction`), so adding
    images to a source never moves an imported one."""
    loose = [e for e in examples if e.split is None]
    if not loose:
        return
    names = [e.name or e.image.name for e in loose]
    sides = stable_split(names, valid_fraction, seed, {n: s for n, s in (kept or {}).items() if n in set(names)})
    for example, name in zip(loose, names, strict=True):
        example.split = sides[name]


def write_dataset(out: Path, examples: Iterable[Example], classes: Classes, source: str, record: dict) -> dict:
    """Write the layout and ``classes.json`` into a folder beside `out`, then rename it to `out`; nothing is left
    half-written on failure. Returns how many pairs went to each split."""
    examples = list(examples)
    if not examples:
        raise DataError(f"{source}: no images to import")
    check_names(examples)
    by_split: dict[str, list[Path]] = {}
    for example in examples:
        by_split.setdefault(example.split, []).append(example.image)
    check_disjoint({split: [p for p in paths if p.is_file()] for split, paths in by_split.items()})  # files
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        counts = {"train": 0, "valid": 0} | ({"test": 0} if "test" in by_split else {})
        for split in counts:
            (staging / f"{split}_images").mkdir()
            (staging / f"{split}_masks").mkdir()
        for example in tqdm(examples, desc="importing", unit="img"):
            _write_one(staging, example, len(classes.names))
            counts[example.split] += 1
        write_classes_file(staging, classes, VOID, f"; imported from {source}")
        splits = {s: sorted((e.name or e.image.name) for e in examples if e.split == s) for s in counts}
        (staging / "split.json").write_text(json.dumps(record | splits, indent=2) + "\n")
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts | {"out": str(out), "classes": len(classes.names), "classes_file": str(out / CLASSES_FILE)}


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished `staging` folder at `out`: renamed over an empty one, or, over an earlier import, after
    moving that aside (removed once the new one is in place; a crash in between leaves it beside `out`)."""
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    aside = None
    if out.exists():
        aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.earlier."))
        os.replace(out, aside / out.name)
    publish(staging, out, directory=True)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _write_one(root: Path, example: Example, num_classes: int) -> None:
    name = example.name or example.image.name
    if example.data is None and not example.image.is_file():
        raise DataError(f"{example.image}: image not found")
    try:
        size = upright_size(io.BytesIO(example.data) if example.data is not None else example.image)
    except ImageError as err:
        raise DataError(str(err)) from None
    mask = example.mask()
    if mask.shape != (size[1], size[0]):
        raise DataError(
            f"{example.image}: image is {size[0]}x{size[1]} (upright) but its labels are "
            f"{mask.shape[1]}x{mask.shape[0]}"
        )
    bad = np.unique(mask[(mask >= num_classes) & (mask != VOID)])
    if bad.size:
        raise DataError(f"{example.image}: label value(s) {bad.tolist()[:8]} beyond the {num_classes} classes")
    if example.data is not None:
        (root / f"{example.split}_images" / name).write_bytes(example.data)
    else:
        shutil.copyfile(example.image, root / f"{example.split}_images" / name)
    Image.fromarray(mask).save(root / f"{example.split}_masks" / f"{Path(name).stem}.png")
