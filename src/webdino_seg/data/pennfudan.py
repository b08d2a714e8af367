"""The Penn-Fudan pedestrian release: download it, and turn it (folder or zip) into train/valid folders."""

from __future__ import annotations

import random
import tempfile
import zipfile
from functools import partial
from pathlib import Path

from .datasets import DataError
from .formats.writer import Example, check_out, write_dataset
from .images import read_mask
from .labels import Classes

PENNFUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"


def _find_release(root: Path) -> tuple[Path, Path]:
    for images in sorted(root.rglob("PNGImages")):
        masks = images.parent / "PedMasks"
        if masks.is_dir():
            return images, masks
    raise DataError(f"{root}: no PNGImages/ folder with a PedMasks/ beside it (the Penn-Fudan release layout)")


def prepare_pennfudan(source: str | Path, out: str | Path, valid_count: int = 24, seed: int = 42) -> dict:
    """Turn the original Penn-Fudan release (folder or zip) into train/valid image and binary-mask folders.

    The split is a seeded shuffle of the sorted stems and is recorded in ``out/split.json``; the
    folder is written as every imported dataset is (`formats.writer`), with its classes.json.
    """
    source, out = Path(source), Path(out)
    check_out(out, source)
    with tempfile.TemporaryDirectory() as unpacked:
        if source.is_file():
            try:
                with zipfile.ZipFile(source) as zf:
                    zf.extractall(unpacked)
            except zipfile.BadZipFile:
                raise DataError(f"{source}: not a zip file") from None
            root = Path(unpacked)
        elif source.is_dir():
            root = source
        else:
            raise DataError(f"{source}: no such file or folder")
        images_dir, masks_dir = _find_release(root)
        stems = sorted(p.stem for p in images_dir.glob("*.png"))
        if not stems:
            raise DataError(f"{images_dir}: no .png images")
        missing = [s for s in stems if not (masks_dir / f"{s}_mask.png").exists()]
        if missing:
            raise DataError(f"{masks_dir}: no mask for {len(missing)} image(s), e.g. {missing[0]}_mask.png")
        if not 0 < valid_count < len(stems):
            raise DataError(f"--valid-count {valid_count} must be between 1 and {len(stems) - 1}")
        order = stems[:]
        random.Random(seed).shuffle(order)
        valid = set(order[:valid_count])
        examples = [
            Example(
                images_dir / f"{s}.png",
                partial(read_mask, masks_dir / f"{s}_mask.png", mode="binary"),
                "valid" if s in valid else "train",
            )
            for s in stems
        ]
        record = {
            "source": str(source),
            "seed": seed,
            "valid_count": valid_count,
            "mask_values": "0 background, 1 person",
        }
        info = write_dataset(out, examples, Classes(("background", "person")), str(source), record)
    return {"train": info["train"], "valid": info["valid"], "out": str(out)}


def download_pennfudan(out: str | Path, url: str = PENNFUDAN_URL, sha256: str | None = None) -> Path:
    """Download the official Penn-Fudan zip (resumable, checked) and check it holds the release layout."""
    from ..utils.download import download_url, quarantine

    path = download_url(url, Path(out), sha256=sha256)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        bad = quarantine(path)
        raise DataError(
            f"{path} (downloaded from {url}): not a zip file; moved it aside to {bad}, the next try downloads it again"
        ) from None
    if not any("PNGImages/" in n for n in names) or not any("PedMasks/" in n for n in names):
        raise DataError(f"{path}: zip does not hold PNGImages/ and PedMasks/")
    return path
