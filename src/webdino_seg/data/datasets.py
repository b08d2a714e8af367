"""Image/mask datasets: pairing files in split folders (or a flat images/ + masks/ folder), and the seeded
training dataset."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .augment import eval_transform, normalize, sample_seed, seed_transform, train_transform
from .images import IMAGE_SUFFIXES, ImageError, read_image, read_mask, resolve_mask_mode


class DataError(ValueError):
    """A dataset folder that cannot be used; the message names the folder or file."""


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
