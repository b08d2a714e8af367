"""Predictor: a loaded segmentation model that turns RGB images of any size into class-id masks.

Images (`predict.py`) and video (`video.py`) are both built on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.images import to_rgb
from ..data.labels import Classes
from ..models.checkpoint import load_model
from ..models.layers import check_image_size
from ..models.segmentation import SegmentationModel, model_input, upsample
from ..utils.overlay import inset_legend, overlay
from ..utils.runtime import autocast, prepare_model, resolve_device, speed_flags
from .formats import ExportFormat, for_file
from .precision import native_bf16, quantize
from .precision import resolve as resolve_precision
from .settings import DEFAULTS

TTA_SCALES = (0.75, 1.0, 1.25)  # of the model's input size, rounded to multiples of the patch size
TILE_OVERLAP = 1 / 3  # of a window's side shared with the next window (--tile)
SHRINK_NOTE = 4  # an image shrunk more than this many times per side (without --tile) is noted


class Predictor:
    """Runs a SegmentationModel on RGB images of any size and returns class-id masks of the same size.

    The model is used as it is, on its own device and in its own dtype: a Predictor never moves or
    casts the model it is given, runs it in eval mode only for the length of each call (its training
    mode is restored after), and sets no process-wide flag. `from_checkpoint` loads a model of its own
    and places it (on a GPU: the frozen backbone kept in bf16, CUDA speed flags on for each call).
    """

    def __init__(
        self,
        model: SegmentationModel,
        imgsz: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        class_names: list[str],
        *,
        device: str | torch.device | None = None,
        amp: bool = True,
        tta: bool = False,
        tta_scales: tuple[float, ...] = TTA_SCALES,
        tta_flip: bool = True,
        colors: list[list[int]] | None = None,
        tile: bool = False,
        precision: str = "fp32",
        engine: str = "auto",
    ) -> None:
        """`device` is where the model is (default: where its parameters are); a model elsewhere is an error.
        `colors` (one RGB per class) draw overlays; default: the fixed palette. With `tile`, an image larger than
        the model's input is segmented in overlapping windows of that size at full resolution (sliding window).
        `precision` (CPU): fp32, bf16 (where the CPU has it natively), int8 (a quantized copy of the model; the given
        model is untouched) or auto; `engine` runs bf16 and int8: openvino, torch or auto (see `precision.resolve`)."""
        check_image_size(*imgsz, model.backbone.patch_size)
        self.device = _model_device(model, device)
        self.precision, self.engine, self.precision_note = resolve_precision(precision, self.device, engine)
        self.imgsz = tuple(imgsz)
        self.model, self.quantized = self._lower(model)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.class_names = class_names
        self.colors = np.array(colors or Classes(tuple(class_names)).colors, dtype=np.uint8)
        self.amp = amp
        self.tta = tta
        p = model.backbone.patch_size
        sizes = dict.fromkeys(tuple(max(p, round(side * s / p) * p) for side in self.imgsz) for s in tta_scales)
        self.tta_sizes = list(sizes) if tta else [self.imgsz]
        self.tta_flips = (False, True) if tta and tta_flip else (False,)
        self.tile = tile

    def _lower(self, model: SegmentationModel) -> tuple[torch.nn.Module, list[str]]:
        """The model that runs at this precision on this engine (built now, so that a model that cannot be built
        fails here, not on the first image), and the Linear layers quantized."""
        if self.precision == "fp32":
            return model, []
        if self.engine == "openvino":
            from .openvino import OpenVinoModel

            lowered = OpenVinoModel(model, self.precision, native_bf16())
            lowered.compile_for(self.imgsz)
            return lowered, lowered.quantized
        return quantize(model) if self.precision == "int8" else (model, [])

    def describe_tta(self) -> str:
        """What test-time augmentation does, in one line ('' when off)."""
        if not self.tta:
            return ""
        sizes = ", ".join(f"{h}x{w}" for h, w in self.tta_sizes)
        flip = "horizontal flip x " if len(self.tta_flips) == 2 else ""
        passes = len(self.tta_sizes) * len(self.tta_flips)
        return f"test-time augmentation: {flip}sizes {sizes} ({passes} passes, probabilities averaged)"

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str = DEFAULTS.device,
        imgsz: tuple[int, int] | None = DEFAULTS.imgsz,
        weights: str | None = DEFAULTS.weights,
        tta: bool = DEFAULTS.tta,
        tile: bool = DEFAULTS.tile,
        precision: str = DEFAULTS.precision,
        engine: str = DEFAULTS.engine,
    ) -> Predictor:
        """Load a checkpoint written by training, or an exported model (`formats.FORMATS`: an ONNX graph run with
        onnxruntime, an OpenVINO IR run with OpenVINO); `imgsz` defaults to the size it was trained (or exported) at."""
        exported = for_file(path)
        if exported is not None:
            return cls._from_export(path, exported, device=device, imgsz=imgsz, tta=tta, tile=tile, precision=precision)
        model, ckpt = load_model(path, weights)
        model = prepare_model(model, resolve_device(device))  # our own model: placed, frozen backbone in bf16 on GPU
        return cls(
            model,
            tuple(imgsz or ckpt["imgsz"]),
            ckpt["mean"],
            ckpt["std"],
            ckpt["class_names"],
            tta=tta,
            colors=ckpt.get("class_colors"),
            tile=tile,
            precision=precision,
            engine=engine,
        )

    @classmethod
    def _from_export(
        cls,
        path: str | Path,
        exported: ExportFormat,
        *,
        device: str,
        imgsz: tuple[int, int] | None,
        tta: bool,
        tile: bool,
        precision: str,
    ) -> Predictor:
        """A predictor over an exported model (`exported` says its format), run by its engine at the size it was
        exported at."""
        onnx_model = exported.load(path, device)
        graph_precision = onnx_model.meta["precision"]
        if precision not in ("auto", "fp32", graph_precision):  # fp32, the default, takes the graph as it is
            raise ValueError(
                f"--precision {precision}: {path} is an exported model computing in {graph_precision} "
                "(export --int8 makes an int8 one)"
            )
        fixed = tuple(onnx_model.meta["imgsz"])
        if imgsz is not None and tuple(imgsz) != fixed:
            raise ValueError(
                f"--imgsz {imgsz[0]} {imgsz[1]}: {path} was exported at {fixed[0]}x{fixed[1]}; "
                "export it again with --imgsz to use another size"
            )
        # the graph normalises itself: it takes RGB in [0, 1]
        predictor = cls(
            onnx_model,
            fixed,
            (0.0, 0.0, 0.0),
            (1.0, 1.0, 1.0),
            onnx_model.meta["class_names"],
            device=resolve_device(device),
            amp=False,
            tta=tta,
            tta_scales=(1.0,),  # an exported graph has one input size: flips only
            tile=tile,
        )
        predictor.precision, predictor.engine = graph_precision, exported.engine
        if graph_precision != "fp32":
            predictor.precision_note = f"precision: {graph_precision} by {exported.engine} (the exported graph's own)"
        return predictor

    def _to_device(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """uint8 (B, 3, H, W) tensors on the device: one pinned copy per group of same-sized images."""
        if all(img.shape == images[0].shape for img in images):
            groups = [np.stack(images)]
        else:
            groups = [img[None] for img in images]
        out = []
        for group in groups:
            group = np.ascontiguousarray(group) if group.flags.writeable else group.copy()  # torch wants writable
            x = torch.from_numpy(group)
            if self.device.type == "cuda":
                x = x.pin_memory()
            out.append(x.to(self.device, non_blocking=True).permute(0, 3, 1, 2))
        return out

    def _prepare(self, images: list[np.ndarray], size: tuple[int, int] | None = None) -> torch.Tensor:
        """Normalised model input at `size` (default `imgsz`; bilinear, as cv2 INTER_LINEAR in training)."""
        return torch.cat([model_input(x, size or self.imgsz, self.mean, self.std) for x in self._to_device(images)])

    @torch.inference_mode()
    def probabilities(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Per-image class probabilities (classes, H, W) at each image's own size, averaged over the
        test-time augmentations (flips and sizes) when `tta` is on, and over overlapping windows with `tile`."""
        if self.tile:
            return [self._tiled(image) for image in images]
        return self._whole(images)

    def _tiled(self, image: np.ndarray, batch: int = 8) -> torch.Tensor:
        """Probabilities of one image from windows of the model's input size at full resolution, overlapping by
        `TILE_OVERLAP`, the last one in each direction flush with the edge; each pixel averages its windows."""
        (h, w), (height, width) = self.imgsz, image.shape[:2]
        if height <= h and width <= w:
            return self._whole([image])[0]
        starts = [(y, x) for y in _starts(height, h) for x in _starts(width, w)]
        total = torch.zeros(len(self.class_names), height, width, device=self.device)
        count = torch.zeros(1, height, width, device=self.device)
        for i in range(0, len(starts), batch):
            group = starts[i : i + batch]
            crops = [image[y : y + h, x : x + w] for y, x in group]
            for (y, x), probs in zip(group, self._whole(crops), strict=True):
                total[:, y : y + probs.shape[1], x : x + probs.shape[2]] += probs
                count[:, y : y + probs.shape[1], x : x + probs.shape[2]] += 1
        return total / count

    def shrink_note(self, image: np.ndarray, name: str) -> str | None:
        """A note where `image` is shrunk more than `SHRINK_NOTE` times per side to the model's input (and
        --tile is off), else None."""
        factor = max(image.shape[0] / self.imgsz[0], image.shape[1] / self.imgsz[1])
        if self.tile or factor <= SHRINK_NOTE:
            return None
        return (
            f"{name} ({image.shape[1]}x{image.shape[0]}) is shrunk {factor:.1f}x to the model's "
            f"{self.imgsz[1]}x{self.imgsz[0]}, losing small detail: --tile segments it window by window at full "
            "resolution"
        )

    def _whole(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """`probabilities` of each image resized whole to the model's input."""
        total: list[torch.Tensor] | None = None
        for size in self.tta_sizes:
            x = self._prepare(images, size)
            for flip in self.tta_flips:
                grid = self._grid(x.flip(-1)).flip(-1) if flip else self._grid(x)
                probs = [upsample(g[None], img.shape[:2])[0].softmax(0) for g, img in zip(grid, images, strict=True)]
                total = probs if total is None else [t + q for t, q in zip(total, probs, strict=True)]
        count = len(self.tta_sizes) * len(self.tta_flips)
        return [t / count for t in total]

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (float32) for a prepared batch: in eval mode, under autocast and the CUDA speed
        flags where they apply; the model's mode and the flags are as they were afterwards."""
        training = self.model.training
        self.model.eval()
        try:
            torch_bf16 = self.precision == "bf16" and self.engine == "torch"
            cpu_bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if torch_bf16 else None
            with speed_flags(self.device), cpu_bf16 or autocast(self.device, self.amp):
                return self.model(x).float()
        finally:
            self.model.train(training)

    @torch.inference_mode()
    def logits(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Per-image logits (classes, H, W) upsampled to each image's own size (float32)."""
        grid = self._grid(self._prepare(images))
        return [upsample(g[None], img.shape[:2])[0] for g, img in zip(grid, images, strict=True)]

    @torch.inference_mode()
    def predict_batch(self, images: Iterable[np.ndarray | Image.Image]) -> list[np.ndarray]:
        """Class-id masks (uint8, H x W) for a batch of RGB arrays or PIL images."""
        arrays = [to_rgb(img) if isinstance(img, Image.Image) else _as_rgb(img) for img in images]
        if self.tta or self.tile:
            return [class_ids(p) for p in self.probabilities(arrays)]
        if all(a.shape == arrays[0].shape for a in arrays):  # video frames: one upsample, one copy back
            grid = self._grid(self._prepare(arrays))
            # max(1).indices is argmax (first maximum on ties) without argmax's slow strided path on the CPU
            masks = upsample(grid, arrays[0].shape[:2]).max(1).indices.to(torch.uint8).cpu().numpy()
            return list(masks)
        return [class_ids(lg) for lg in self.logits(arrays)]

    def predict(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """Class-id mask (uint8) at the input's size."""
        return self.predict_batch([image])[0]

    def draw(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The mask blended over the image in the model's class colours; with more than two classes, a legend
        of the classes present in its bottom-left corner."""
        out = overlay(image, mask, colors=self.colors)
        if len(self.class_names) > 2:
            present = {int(v) for v in np.unique(mask) if v < len(self.class_names)}
            out = inset_legend(out, self.class_names, self.colors, present)
        return out


def class_ids(scores: torch.Tensor) -> np.ndarray:
    """The (H, W) uint8 class-id mask of (classes, H, W) logits or probabilities: the first maximum per pixel
    (max(0).indices is argmax without argmax's slow strided path on the CPU)."""
    return scores.max(0).indices.to(torch.uint8).cpu().numpy()


def _starts(length: int, window: int) -> list[int]:
    """Where windows of `window` pixels start along `length` pixels: `TILE_OVERLAP` apart, the last flush with
    the end."""
    if length <= window:
        return [0]
    stride = max(1, round(window * (1 - TILE_OVERLAP)))
    return [*range(0, length - window, stride), length - window]


def _as_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 4:
        return img[..., :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {img.shape}")
    return img


def _model_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """Where `model` runs: its parameters' device, which a given `device` must match."""
    param = next(model.parameters(), None)
    if device is None:
        return param.device if param is not None else torch.device("cpu")
    wanted = resolve_device(device)
    if param is not None and param.device.type != wanted.type:
        raise ValueError(
            f"the model is on {param.device}, not {wanted}: move it first (model.to(...)), or load it with "
            "Predictor.from_checkpoint(path, device=...)"
        )
    return wanted
