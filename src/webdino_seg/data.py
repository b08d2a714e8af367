"""Datasets: preparing Penn-Fudan, reading image/mask folder pairs, and the tutorial's augmentations."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .imageio import IMAGE_SUFFIXES, ImageError, read_image, read_mask, resolve_mask_mode
from .io import publish

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
import albumentations as A

PENNFUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
SPLITS = ("train", "valid")


class DataError(ValueError):
    """A dataset folder that cannot be used; the message names the folder or file."""


# ---------------------------------------------------------------------------------------------
# preparing the original Penn-Fudan release


def _find_release(root: Path) -> tuple[Path, Path]:
    for images in sorted(root.rglob("PNGImages")):
        masks = images.parent / "PedMasks"
        if masks.is_dir():
            return images, masks
    raise DataError(f"{root}: no PNGImages/ folder with a PedMasks/ beside it (the Penn-Fudan release layout)")


def prepare_pennfudan(source: str | Path, out: str | Path, valid_count: int = 24, seed: int = 42) -> dict:
    """Turn the original Penn-Fudan release (folder or zip) into train/valid image and binary-mask folders.

    The split is a seeded shuffle of the sorted stems and is recorded in ``out/split.json``. The
    folder is built beside `out` and renamed into place, so a failure leaves nothing half-written.
    """
    source, out = Path(source), Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: output folder exists and is not empty; choose a new --out")
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
        split = {"valid": sorted(order[:valid_count]), "train": sorted(order[valid_count:])}
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            for name, members in split.items():
                (staging / f"{name}_images").mkdir()
                (staging / f"{name}_masks").mkdir()
                for stem in members:
                    shutil.copyfile(images_dir / f"{stem}.png", staging / f"{name}_images" / f"{stem}.png")
                    mask = read_mask(masks_dir / f"{stem}_mask.png", mode="binary")
                    Image.fromarray(mask).save(staging / f"{name}_masks" / f"{stem}.png")
            record = {
                "source": str(source),
                "seed": seed,
                "valid_count": valid_count,
                "classes": ["background", "person"],
                "mask_values": "0 background, 1 person",
                **split,
            }
            (staging / "split.json").write_text(json.dumps(record, indent=2) + "\n")
            if out.exists():
                out.rmdir()
            publish(staging, out, directory=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return {"train": len(split["train"]), "valid": len(split["valid"]), "out": str(out)}


def download_pennfudan(out: str | Path, url: str = PENNFUDAN_URL, sha256: str | None = None) -> Path:
    """Download the official Penn-Fudan zip (resumable, checked) and check it holds the release layout."""
    from .download import download_url

    path = download_url(url, Path(out), sha256=sha256)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        path.unlink()
        raise DataError(f"{url}: the downloaded file is not a zip; removed it") from None
    if not any("PNGImages/" in n for n in names) or not any("PedMasks/" in n for n in names):
        raise DataError(f"{path}: zip does not hold PNGImages/ and PedMasks/")
    return path


# ---------------------------------------------------------------------------------------------
# reading a prepared dataset


def _warn_or_fail(message: str, on_missing: str) -> None:
    if on_missing == "error":
        raise DataError(message + " (use --skip-bad to skip them)")
    import warnings

    warnings.warn(message + "; skipped", stacklevel=3)


def find_pairs(images_dir: Path, masks_dir: Path, on_missing: str = "error") -> list[tuple[Path, Path]]:
    """Pair images with masks by file stem (``x.jpg`` with ``x.png`` or ``x_mask.png``); an image without a
    mask, or a mask without an image, is an error (or, with ``on_missing="skip"``, skipped with a warning)."""
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    if not masks_dir.is_dir():
        raise DataError(f"{masks_dir}: mask folder not found")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    masks = {p.stem.removesuffix("_mask"): p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = [(img, masks[img.stem]) for img in images if img.stem in masks]
    lonely = [img for img in images if img.stem not in masks]
    orphans = sorted(set(masks) - {img.stem for img in images})
    if lonely:
        _warn_or_fail(f"{len(lonely)} image(s) in {images_dir} have no mask in {masks_dir}, e.g. {lonely[0].name}",
                      on_missing)  # fmt: skip
    if orphans:
        _warn_or_fail(f"{len(orphans)} mask(s) in {masks_dir} have no image in {images_dir}, e.g. "
                      f"{masks[orphans[0]].name}", on_missing)  # fmt: skip
    if not pairs:
        raise DataError(f"{images_dir}: no image has a mask in {masks_dir}")
    return pairs


def is_flat(root: Path) -> bool:
    """True for a dataset folder of ``images/`` and ``masks/`` without a train/valid split."""
    return not (root / "train_images").is_dir() and (root / "images").is_dir() and (root / "masks").is_dir()


def split_pairs(
    root: str | Path, split: str, valid_fraction: float | None = None, seed: int = 0, on_missing: str = "error"
) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of `split`: from ``<split>_images/`` and ``<split>_masks/``, or from a flat
    ``images/`` + ``masks/`` pair (all of it, or, with `valid_fraction`, a seeded train/valid split of it)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if not is_flat(root):
        return find_pairs(root / f"{split}_images", root / f"{split}_masks", on_missing)
    pairs = find_pairs(root / "images", root / "masks", on_missing)
    if valid_fraction is None:
        return pairs
    if not 0 < valid_fraction < 1:
        raise DataError(f"--valid-fraction {valid_fraction} must be between 0 and 1 (e.g. 0.15)")
    if len(pairs) < 2:
        raise DataError(f"{root}: {len(pairs)} pair(s) cannot be split into train and valid")
    order = pairs[:]
    random.Random(seed).shuffle(order)
    n_valid = min(len(pairs) - 1, max(1, round(len(pairs) * valid_fraction)))
    chosen = order[:n_valid] if split == "valid" else order[n_valid:]
    return sorted(chosen)


def train_transform(imgsz: tuple[int, int]) -> A.Compose:
    """The tutorial's training augmentation: resize, horizontal flip, brightness/contrast, rotation."""
    return A.Compose(
        [
            A.Resize(*imgsz),
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(p=0.2),
            A.Rotate(limit=25, p=0.5, fill=0, fill_mask=0),
        ]
    )


def eval_transform(imgsz: tuple[int, int]) -> A.Compose:
    """Resize only (bilinear for the image, nearest for the mask)."""
    return A.Compose([A.Resize(*imgsz)])


def normalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB to a normalized (3, H, W) float tensor."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def sample_seed(*parts: int) -> int:
    """A 32-bit seed from integers (run seed, epoch or view, index): same inputs, same augmentation."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Seed a pipeline so each step draws independently (Compose.set_random_seed gives every step the
    same seed, which makes flip, brightness and rotation fire together)."""
    transform.set_random_seed(seed)
    for k, step in enumerate(transform.transforms):
        step.set_random_seed(sample_seed(seed, k))


@dataclass
class Sample:
    """One decoded pair before augmentation."""

    image: np.ndarray
    mask: np.ndarray
    name: str


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/mask pairs from ``<split>_images/`` and ``<split>_masks/`` with seeded augmentation.

    Item ``i`` at epoch (or view) ``e`` is augmented with a seed derived from (seed, e, i), so runs
    repeat exactly whatever the worker count, and a resumed run sees the same data.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        imgsz: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_classes: int = 2,
        mask_mode: str = "ids",
        augment: bool = False,
        seed: int = 0,
        on_bad: str = "error",
        validate: bool = False,
        valid_fraction: float | None = None,
    ) -> None:
        root = Path(root)
        self.pairs = split_pairs(root, split, valid_fraction, seed, on_bad)
        if mask_mode == "auto":
            mask_mode, _ = resolve_mask_mode(mask_mode, [m for _, m in self.pairs], num_classes)
        self.imgsz = tuple(imgsz)
        self.mean, self.std = mean, std
        self.num_classes, self.mask_mode = num_classes, mask_mode
        self.transform = train_transform(self.imgsz) if augment else eval_transform(self.imgsz)
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.on_bad = on_bad
        if on_bad == "skip":
            self.pairs = [pair for pair in self.pairs if self._usable(pair)]
            if not self.pairs:
                raise DataError(f"{root}: no usable {split} pairs")
        elif validate:  # fail now, naming the file, rather than in the middle of an epoch
            for pair in self.pairs:
                self.load(pair)

    def _usable(self, pair: tuple[Path, Path]) -> bool:
        try:
            self.load(pair)
            return True
        except ImageError as err:
            import warnings

            warnings.warn(f"skipping {pair[0].name}: {err}", stacklevel=2)
            return False

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Choose which seeded augmentation draw (epoch or cache view) items use."""
        self.epoch = epoch

    def load(self, pair: tuple[Path, Path]) -> Sample:
        """Decode and check one pair (same size, valid class ids)."""
        image_path, mask_path = pair
        image = read_image(image_path)
        mask = read_mask(mask_path, self.mask_mode, self.num_classes)
        if image.shape[:2] != mask.shape:
            raise ImageError(
                f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but its mask {mask_path.name} is "
                f"{mask.shape[1]}x{mask.shape[0]}"
            )
        return Sample(image, mask, image_path.stem)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Item `index` at the current epoch, or, for an ``(epoch, index)`` pair, at that epoch (or view):
        a data loader's long-lived workers then need no `set_epoch`."""
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        sample = self.load(self.pairs[index])
        if self.augment:
            seed_transform(self.transform, sample_seed(self.seed, epoch, index))
        out = self.transform(image=sample.image, mask=sample.mask)
        return normalize(out["image"], self.mean, self.std), torch.from_numpy(np.ascontiguousarray(out["mask"])).long()


def show_data(
    root: str | Path, out: str | Path, split: str = "train", count: int = 8, mask_mode: str = "auto",
    num_classes: int = 2, log=print,
) -> Path:  # fmt: skip
    """Write a grid PNG of `count` samples with their ground-truth masks overlaid and captioned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write
    from .overlay import overlay

    pairs = split_pairs(root, split)
    mask_mode, note = resolve_mask_mode(mask_mode, [m for _, m in pairs], num_classes)
    if note:
        log(note)
    pairs = pairs[:count]
    cols = min(4, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image_path, mask_path) in zip(axes.flat, pairs, strict=False):
        image = read_image(image_path)
        mask = read_mask(mask_path, mask_mode)
        ax.imshow(overlay(image, mask))
        share = (mask == 1).mean() * 100
        ax.set_title(f"{image_path.name}\nground truth: {share:.0f}% class 1", fontsize=9)
    fig.suptitle(f"{Path(root).name}: {split} split, masks read as {mask_mode}", fontsize=11)
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
    return Path(out)
