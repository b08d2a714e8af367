"""Image inference: a Predictor over a loaded model, and the `predict` command's folder/glob runner."""

from __future__ import annotations

import contextlib
import glob
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .backbone import check_image_size
from .checkpoint import load_model
from .imageio import IMAGE_SUFFIXES, ImageError, read_image, to_rgb
from .io import atomic_write
from .model import SegmentationModel, upsample
from .overlay import overlay


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on the CPU (keeps CPU results exact)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
        self.device = resolve_device(device) if isinstance(device, str) else device
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

    def predict_video(self, src: str | int, dst: str | Path, **kwargs: object) -> dict:
        """Write an overlay video for `src` (file or camera index); see `video.run_video`."""
        from .video import run_video

        return run_video(self, src, dst, **kwargs)


def _as_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 4:
        return img[..., :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {img.shape}")
    return img


def list_images(spec: str | Path) -> list[Path]:
    """An image file, a folder of images, or a glob pattern, as a sorted list of files."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(
            Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES
        )
    if not files:
        raise FileNotFoundError(f"no images found at {spec} (an image file, a folder or a glob like 'dir/*.jpg')")
    return files


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def save_png(path: Path, array: np.ndarray) -> None:
    """Write an array as PNG atomically."""
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG", compress_level=1))


def predict_paths(
    predictor: Predictor, spec: str | Path, out: str | Path, batch: int = 8, skip_bad: bool = False
) -> dict:
    """Predict every image in `spec`; write ``<stem>_overlay.png`` and ``<stem>_mask.png`` (class ids) to `out`."""
    from tqdm.auto import tqdm

    files = list_images(spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done, skipped, start = 0, [], time.perf_counter()
    with tqdm(total=len(files), unit="img", desc="predict") as bar:
        for group in _chunks(files, batch):
            images, names = [], []
            for path in group:
                try:
                    images.append(read_image(path))
                    names.append(path)
                except ImageError as err:
                    if not skip_bad:
                        raise
                    skipped.append(str(err))
                    bar.write(f"skipped: {err}", file=sys.stderr)
            if images:
                for path, image, mask in zip(names, images, predictor.predict_batch(images), strict=True):
                    save_png(out / f"{path.stem}_overlay.png", overlay(image, mask))
                    save_png(out / f"{path.stem}_mask.png", mask)
                    done += 1
            bar.update(len(group))
    seconds = time.perf_counter() - start
    return {"images": done, "skipped": skipped, "seconds": seconds, "images_per_second": done / max(seconds, 1e-9)}
