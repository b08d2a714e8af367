"""The tutorial's augmentations, seeded per item so every run (and every worker) draws the same."""

from __future__ import annotations

import hashlib
import importlib
import os

import cv2
import numpy as np
import torch


def _albumentations():
    """albumentations, imported without its update check over the network (and without leaving the
    environment variable that turns the check off set for the rest of the process)."""
    name = "NO_ALBUMENTATIONS_UPDATE"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        return importlib.import_module("albumentations")
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


A = _albumentations()


def _resize(imgsz: tuple[int, int]) -> A.Resize:
    """Bilinear for the image; for the mask, the nearest pixel by centre (cv2's INTER_NEAREST picks
    floor(x * scale) instead, which shifts the mask against the image by up to half a pixel)."""
    return A.Resize(*imgsz, mask_interpolation=cv2.INTER_NEAREST_EXACT)


def train_transform(imgsz: tuple[int, int]) -> A.Compose:
    """The tutorial's training augmentation: resize, horizontal flip, brightness/contrast, rotation."""
    return A.Compose(
        [
            _resize(imgsz),
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(p=0.2),
            A.Rotate(limit=25, p=0.5, fill=0, fill_mask=0),
        ]
    )


def eval_transform(imgsz: tuple[int, int]) -> A.Compose:
    """Resize only (bilinear for the image, nearest by pixel centre for the mask)."""
    return A.Compose([_resize(imgsz)])


def normalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB to a normalized (3, H, W) float tensor."""
    return normalize_batch(to_chw(image)[None], mean, std)[0]


def to_chw(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB as a (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def normalize_batch(
    images: torch.Tensor, mean: tuple[float, ...] | torch.Tensor, std: tuple[float, ...] | torch.Tensor
) -> torch.Tensor:
    """(B, 3, H, W) uint8 RGB to normalized float32, on the images' device (equal to `normalize` image by image)."""
    x = images.float().div_(255.0)
    stats = [torch.as_tensor(v, dtype=torch.float32).view(1, 3, 1, 1).to(x.device) for v in (mean, std)]
    return (x - stats[0]) / stats[1]


def denormalize(
    images: torch.Tensor, mean: tuple[float, ...] | torch.Tensor, std: tuple[float, ...] | torch.Tensor
) -> torch.Tensor:
    """Normalized (B, 3, H, W) float images back to the uint8 they were before `normalize`."""
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).round_().clamp_(0, 255).to(torch.uint8)


def sample_seed(*parts: int) -> int:
    """A 32-bit seed from integers (run seed, epoch or view, index): same inputs, same augmentation."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Seed a pipeline so each step draws independently (Compose.set_random_seed gives every step the
    same seed, which makes flip, brightness and rotation fire together)."""
    transform.set_random_seed(seed)
    for k, step in enumerate(transform.transforms):
        step.set_random_seed(sample_seed(seed, k))
