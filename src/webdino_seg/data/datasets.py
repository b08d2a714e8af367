"""Image/mask datasets: pairing files in split folders (or a flat images/ + masks/ folder), and the seeded
training dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..utils.metrics import VOID
from .augment import eval_transform, normalize, sample_seed, seed_transform, to_chw, train_transform
from .errors import DataError
from .images import IMAGE_SUFFIXES, ImageError, read_image, read_mask, resolve_mask_mode
from .labels import Coding
from .splitrule import stable_split

__all__ = ["DataError", "SegmentationDataset", "find_pairs", "is_flat", "split_pairs"]


def _warn_or_fail(message: str, on_missing: str) -> None:
    if on_missing == "error":
        raise DataError(message + " (use --skip-bad to skip them)")
    import warnings

    warnings.warn(message + "; skipped", stacklevel=3)


def _by_stem(paths: list[Path], folder: Path, key) -> dict[str, Path]:
    """Files by the stem they pair on; two files on one stem (``a.png`` and ``a.jpg``, or ``a.png`` and
    ``a_mask.png``) cannot be paired and are an error that names both."""
    found: dict[str, Path] = {}
    for path in paths:
        stem = key(path)
        if stem in found:
            raise DataError(f"{folder}: {found[stem].name} and {path.name} both pair as {stem!r}; keep one of them")
        found[stem] = path
    return found


def find_pairs(images_dir: Path, masks_dir: Path, on_missing: str = "error") -> list[tuple[Path, Path]]:
    """Pair images with masks by file stem (``x.jpg`` with ``x.png`` or ``x_mask.png``); an image without a
    mask, or a mask without an image, is an error (or, with ``on_missing="skip"``, skipped with a warning)."""
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    if not masks_dir.is_dir():
        raise DataError(f"{masks_dir}: mask folder not found")
    images = _by_stem(
        sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), images_dir, lambda p: p.stem
    )
    if not images:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    masks = _by_stem(
        sorted(p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
        masks_dir,
        lambda p: p.stem.removesuffix("_mask"),
    )
    pairs = [(img, masks[stem]) for stem, img in images.items() if stem in masks]
    lonely = [img for stem, img in images.items() if stem not in masks]
    orphans = sorted(set(masks) - set(images))
    if lonely:
        _warn_or_fail(
            f"{len(lonely)} image(s) in {images_dir} have no mask in {masks_dir}, e.g. {lonely[0].name}", on_missing
        )
    if orphans:
        _warn_or_fail(
            f"{len(orphans)} mask(s) in {masks_dir} have no image in {images_dir}, e.g. {masks[orphans[0]].name}",
            on_missing,
        )
    if not pairs:
        raise DataError(f"{images_dir}: no image has a mask in {masks_dir}")
    return pairs


def is_flat(root: Path) -> bool:
    """True for a dataset folder of ``images/`` and ``masks/`` without a train/valid split."""
    return not (root / "train_images").is_dir() and (root / "images").is_dir() and (root / "masks").is_dir()


def split_pairs(
    root: str | Path,
    split: str,
    *,
    valid_fraction: float | None = None,
    seed: int = 0,
    on_missing: str = "error",
    recorded: dict | None = None,
) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of `split`: from ``<split>_images/`` and ``<split>_masks/``, or from a flat
    ``images/`` + ``masks/`` pair: the split `recorded` by a run (image names per split), else a seeded
    train/valid split with `valid_fraction`, else (or for split ``all``) all of it."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if not is_flat(root):
        return find_pairs(root / f"{split}_images", root / f"{split}_masks", on_missing)
    pairs = find_pairs(root / "images", root / "masks", on_missing)
    if split == "all":
        return pairs
    if recorded is not None:
        return recorded_pairs(root, pairs, recorded, split)
    if valid_fraction is None:
        return pairs
    if len(pairs) < 2:
        raise DataError(f"{root}: {len(pairs)} pair(s) cannot be split into train and valid")
    sides = stable_split((image.name for image, _ in pairs), valid_fraction, seed)  # adding images moves none
    return [pair for pair in pairs if sides[pair[0].name] == split]


def recorded_pairs(root: Path, pairs: list[tuple[Path, Path]], recorded: dict, split: str) -> list[tuple[Path, Path]]:
    """The pairs a recorded split names for `split`; an image of the folder in neither split, or one the record
    names that is gone, is a `DataError`: a run's split never changes under it."""
    named = set(recorded["train"]) | set(recorded["valid"])
    by_name = {image.name: (image, mask) for image, mask in pairs}
    new = sorted(set(by_name) - named)
    gone = sorted(named - set(by_name))
    if new:
        raise DataError(
            f"{root}: {len(new)} image(s) are in neither split of the run (e.g. {new[0]}); a run keeps the split it "
            "started with, so they are not moved into training or validation. To learn from them, start a new run "
            "on the folder (a new --out; --init-from RUN/best_model_iou.pth starts from this run's model)"
        )
    if gone:
        raise DataError(
            f"{root}: {len(gone)} image(s) of the run's split are missing (e.g. {gone[0]}); put them back "
            "or start a new run"
        )
    return [by_name[name] for name in sorted(recorded[split])]


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
        *,
        num_classes: int = 2,
        mask_mode: str = "ids",
        augment: bool = False,
        seed: int = 0,
        on_bad: str = "error",
        validate: bool = False,
        valid_fraction: float | None = None,
        coding: Coding | None = None,
        recorded: dict | None = None,
    ) -> None:
        root = Path(root)
        self.pairs = split_pairs(
            root, split, valid_fraction=valid_fraction, seed=seed, on_missing=on_bad, recorded=recorded
        )
        self.coding = coding or Coding()
        if mask_mode == "auto":
            mask_mode, _ = resolve_mask_mode(mask_mode, [m for _, m in self.pairs], num_classes, self.coding)
        self.imgsz = tuple(imgsz)
        self.mean, self.std = mean, std
        self.num_classes, self.mask_mode = num_classes, mask_mode
        self.transform = train_transform(self.imgsz) if augment else eval_transform(self.imgsz)
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.on_bad = on_bad
        self.digests: dict[str, str] = {}  # image name -> sha256 of its file, where the caller computed them
        self.mask_digests: dict[str, str] = {}  # image name -> sha256 of its mask file, likewise
        self.class_pixels = np.zeros(num_classes, np.int64)  # labelled pixels of each class (after validation)
        self.image_pixels = np.zeros(num_classes, np.int64)  # labelled pixels of the images each class appears in
        if on_bad == "skip":
            self.pairs = [pair for pair in self.pairs if self._usable(pair)]
            if not self.pairs:
                raise DataError(f"{root}: no usable {split} pairs")
        elif validate:  # fail now, naming the file, rather than in the middle of an epoch
            for pair in self.pairs:
                self._check(pair)

    def _check(self, pair: tuple[Path, Path]) -> None:
        """Decode one pair, refuse a mask with no labelled pixel, and count its pixels per class."""
        mask = self.load(pair).mask
        labelled = mask != VOID
        if not labelled.any():
            raise ImageError(
                f"{pair[1]}: every pixel of this mask is ignored ({self.coding.ignore_index}); there is "
                "nothing to learn or score in it: fix the mask or remove the pair"
            )
        counts = np.bincount(mask[labelled], minlength=self.num_classes)[: self.num_classes]
        self.class_pixels += counts
        self.image_pixels[counts > 0] += int(labelled.sum())

    def _usable(self, pair: tuple[Path, Path]) -> bool:
        try:
            self._check(pair)
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
        mask = read_mask(mask_path, self.mask_mode, self.num_classes, self.coding)
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
        image, mask = self._view(self.load(self.pairs[index]), epoch, index)
        return normalize(image, self.mean, self.std), torch.from_numpy(mask).long()

    def views(self, index: int, views: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views 0 .. `views` - 1 of item `index` from one decode of its files: (V, 3, H, W) uint8 images (not
        normalised) and (V, H, W) uint8 masks, each view equal to ``self[(view, index)]`` before normalising."""
        sample = self.load(self.pairs[index])
        drawn = [self._view(sample, view, index) for view in range(views)]
        return torch.stack([to_chw(image) for image, _ in drawn]), torch.stack([torch.from_numpy(m) for _, m in drawn])

    def _view(self, sample: Sample, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The (image, mask) of one decoded sample as augmented at `epoch` (or view) for item `index`."""
        if self.augment:
            seed_transform(self.transform, sample_seed(self.seed, epoch, index))
        out = self.transform(image=sample.image, mask=sample.mask)
        return out["image"], np.ascontiguousarray(out["mask"])


class Undecoded(torch.utils.data.Dataset):
    """A dataset's items before normalising: (3, H, W) uint8 images and (H, W) uint8 masks, the form they travel
    to the device in (a quarter and an eighth of the float32 and int64 bytes)."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.dataset
        epoch, index = index if isinstance(index, tuple) else (ds.epoch, index)
        image, mask = ds._view(ds.load(ds.pairs[index]), epoch, index)
        return to_chw(image), torch.from_numpy(mask)


class AllViews(torch.utils.data.Dataset):
    """Item ``i`` is every view of image ``i`` of a dataset from one decode (see `SegmentationDataset.views`)."""

    def __init__(self, dataset: SegmentationDataset, views: int) -> None:
        self.dataset, self.count = dataset, views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.views(index, self.count)
