"""Predictor: a loaded segmentation model that turns RGB images of any size into class-id masks.

Images (`predict.py`) and video (`video.py`) are both built on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .backbone import check_image_size
from .checkpoint import load_model
from .imageio import to_rgb
from .model import SegmentationModel, upsample
from .runtime import autocast, configure, resolve_device


class Predictor:
    """Runs a SegmentationModel on RGB images of any size and returns class-id masks of the same size."""

    def __init__(
        self,
        model: SegmentationModel,
        imgsz: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        class_names: list[str],
        device: str | torch.device = "auto",
        amp: bool = True,
    ) -> None:
        check_image_size(*imgsz, model.backbone.patch_size)
        self.device = resolve_device(device)
        configure(self.device)
        self.model = model.to(self.device).eval()
        self.imgsz = tuple(imgsz)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.class_names = class_names
        self.amp = amp

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", imgsz: tuple[int, int] | None = None, weights: str | None = None
    ) -> Predictor:
        """Load a checkpoint written by training; `imgsz` defaults to the one it was trained at."""
        model, ckpt = load_model(path, weights)
        return cls(model, tuple(imgsz or ckpt["imgsz"]), ckpt["mean"], ckpt["std"], ckpt["class_names"], device)

    def _prepare(self, images: list[np.ndarray]) -> torch.Tensor:
        batch = []
        for img in images:
            img = np.ascontiguousarray(img) if img.flags.writeable else img.copy()
            x = torch.from_numpy(img).to(self.device).permute(2, 0, 1)[None].float().div_(255)
            batch.append(
                F.interpolate(x, size=self.imgsz, mode="bilinear", align_corners=False)
            )  # as cv2 INTER_LINEAR in training
        return (torch.cat(batch) - self.mean) / self.std

    @torch.inference_mode()
    def logits(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Per-image logits (classes, H, W) upsampled to each image's own size (float32)."""
        with autocast(self.device, self.amp):
            grid = self.model(self._prepare(images)).float()
        return [upsample(g[None], img.shape[:2])[0] for g, img in zip(grid, images, strict=True)]

    def predict_batch(self, images: Iterable[np.ndarray | Image.Image]) -> list[np.ndarray]:
        """Class-id masks (uint8, H x W) for a batch of RGB arrays or PIL images."""
        arrays = [to_rgb(img) if isinstance(img, Image.Image) else _as_rgb(img) for img in images]
        # max(0).indices is argmax (first maximum on ties) without argmax's slow strided path on the CPU
        return [lg.max(0).indices.to(torch.uint8).cpu().numpy() for lg in self.logits(arrays)]

    def predict(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """Class-id mask (uint8) at the input's size."""
        return self.predict_batch([image])[0]


def _as_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 4:
        return img[..., :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {img.shape}")
    return img
