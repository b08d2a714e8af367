"""Reading images and masks from disk into RGB uint8 and class-id arrays, with clear errors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..utils.constants import VOID
from ..utils.files import why_missing
from .labels import Coding
from .names import MASK_MODES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 256_000_000  # 256 megapixels; past this a file is refused (or, for JPEG, decoded reduced)


class ImageError(ValueError):
    """An image or mask file that cannot be used; the message names the file."""


def _open(path: Path, reduce: bool = False) -> Image.Image:
    """Open and decode an image; over `MAX_PIXELS` it is refused, or, with `reduce`, a JPEG is decoded at
    1/2, 1/4 or 1/8 of its size (the first that fits)."""
    if not path.exists():
        raise ImageError(f"{path}: {why_missing(path)}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our limit below, not Pillow's (it refuses at twice its own, ~179 MP)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            pixels = img.width * img.height
            if pixels > MAX_PIXELS:
                if not (reduce and img.format == "JPEG"):
                    raise ImageError(
                        f"{path}: image is {img.width}x{img.height} = {pixels:,} pixels, more than the "
                        f"{MAX_PIXELS:,} ({MAX_PIXELS / 1e6:.0f} MP) allowed; downscale it first"
                    )
                scale = next(s for s in (2, 4, 8, 16) if pixels / s**2 <= MAX_PIXELS)
                img.draft("RGB", (img.width // scale, img.height // scale))
                warnings.warn(
                    f"{path}: {pixels / 1e6:.0f} MP is over the {MAX_PIXELS / 1e6:.0f} MP limit; decoded at "
                    f"1/{scale} size ({img.width}x{img.height})",
                    stacklevel=3,
                )
            img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: image is too large to decode safely ({err}); downscale it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: corrupt or truncated image ({err})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return img


def upright_size(path: str | Path | io.BytesIO) -> tuple[int, int]:
    """The (width, height) `path` (a file, or an image file's bytes in memory) shows in display orientation (EXIF
    rotation applied), from its header alone; an `ImageError` naming the file when it is missing or not an
    image."""
    if not isinstance(path, io.BytesIO):
        path = Path(path)
        if not path.is_file():
            raise ImageError(f"{path}: {why_missing(path)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                turned = img.getexif().get(0x0112) in (5, 6, 7, 8)  # Orientation: a quarter turn
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: not an image file PIL can read ({err})") from None
    return (height, width) if turned else (width, height)


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode (gray, 16-bit, palette, RGBA, CMYK) to an RGB uint8 array, EXIF orientation applied."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        img = background
    return np.array(img.convert("RGB"))  # writable, so torch can take it without a copy warning


def read_image(path: str | Path, reduce: bool = False) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array in display orientation.

    An image over `MAX_PIXELS` is refused; with `reduce`, a JPEG is decoded at a reduced size instead.
    """
    return to_rgb(_open(Path(path), reduce))


def read_mask(
    path: str | Path, mode: str = "ids", num_classes: int | None = None, coding: Coding | None = None
) -> np.ndarray:
    """Read a mask file as (H, W) uint8 class ids; 255 is void.

    `mode` says how to read the stored values: ``ids`` (values are class ids, read through `coding`:
    the ignore value, ADE20K's shift, the colours of an RGB-coded mask), ``binary`` (0 is background,
    anything else is class 1: 0/1 or 0/255 masks) or ``instances`` (0 background, 1..254 instance ids
    of class 1, 255 void). Palette PNGs are read as their indices, 16-bit PNGs as their values; JPEG
    masks are refused except as binary (lossy compression changes the values at every edge).
    """
    path = Path(path)
    stored = _open(path)
    img = ImageOps.exif_transpose(stored)
    coding = coding or Coding()
    if mode == "auto":
        raise ValueError("mask mode 'auto' is decided for a whole split first: see resolve_mask_mode")
    if stored.format == "JPEG" and mode != "binary":
        raise ImageError(
            f"{path}: a JPEG mask: lossy compression changes label values along every edge; save masks "
            "as PNG (or, for two-class masks, pass --mask-mode binary to threshold them)"
        )
    rgb = img.mode in ("RGB", "RGBA") and mode == "ids" and coding.colors
    if img.mode not in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L") and not rgb:
        raise ImageError(
            f"{path}: mask must be single-channel (mode L or P), found mode {img.mode}"
            + ("; for colour-coded masks give the colours in classes.json" if img.mode == "RGB" else "")
        )
    values = np.asarray(img.convert("RGB") if rgb else img)
    if mode == "binary":
        mask = (values > 0).astype(np.uint8)
    elif mode == "instances":
        mask = np.where(values == VOID, VOID, values > 0).astype(np.uint8)
    elif mode == "ids":
        try:
            mask = coding.decode(values, str(path))
        except ValueError as err:
            raise ImageError(str(err)) from None
    else:
        raise ValueError(f"unknown mask mode {mode!r}; use one of {MASK_MODES}")
    if num_classes is not None:
        bad = np.unique(mask[(mask >= num_classes) & (mask != VOID)])
        if bad.size:
            raise ImageError(
                f"{path}: mask has value(s) {bad.tolist()[:8]} outside the {num_classes} classes (0-{num_classes - 1}, "
                f"{coding.ignore_index} ignored); for 0/255 masks use --mask-mode binary, for instance ids "
                "--mask-mode instances, for another ignore value --ignore-index N"
            )
    return mask


def mask_values(paths: list[Path]) -> set[int]:
    """Every value stored in the mask files (read as stored, no mode applied)."""
    values: set[int] = set()
    for path in paths:
        values.update(int(v) for v in np.unique(np.asarray(_open(Path(path)))))  # orientation cannot change them
    return values


def resolve_mask_mode(
    mode: str, mask_paths: list[Path], num_classes: int, coding: Coding | None = None
) -> tuple[str, str | None]:
    """The mask mode to use for a set of masks, and a one-line note when ``auto`` chose for the user.

    ``auto`` reads 2-class masks that hold only 0 and 255 as binary (the most common way binary
    masks are stored), unless another ignore value or colours were given; anything else as class ids
    read through `coding`. Explicit modes are kept.
    """
    if mode != "auto":
        return mode, None
    if coding is not None and (coding.ignore_index != VOID or coding.reduce_labels or coding.colors):
        return "ids", None
    values = mask_values(mask_paths)
    for top in (VOID, 65535):  # two-class masks stored 8-bit (0/255) or 16-bit (0/65535)
        if num_classes == 2 and top in values and values <= {0, top}:
            return "binary", (
                f"masks hold only the values 0 and {top}: reading them as binary ({top} = class 1); "
                + ("pass --mask-mode ids if 255 means void" if top == VOID else "pass --mask-mode ids to refuse that")
            )
    return "ids", None
