"""The `predict` command: segment an image, a folder or a glob; write overlays and class-id masks."""

from __future__ import annotations

import glob
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..data.images import IMAGE_SUFFIXES, ImageError, read_image
from ..utils.files import check_output_dir, save_png
from ..utils.outputs import guard, may_replace
from .predictor import Predictor


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


def plan_outputs(
    spec: str | Path, out: str | Path, overwrite: bool = False, inputs: tuple[Path, ...] = ()
) -> list[Path]:
    """The images of `spec`, after checking that writing their overlays and masks into `out` destroys nothing:
    no input (the images, `inputs` such as the model) is written over, no two images write one file, and a file
    webdino-seg did not write is replaced only with `overwrite`."""
    out = check_output_dir(out)
    files = list_images(spec)
    planned = [out / f"{p.stem}_{kind}.png" for p in files for kind in ("overlay", "mask")]
    guard(planned, [*files, *inputs])
    for path in planned:
        may_replace(path, overwrite)
    return files


def predict_paths(
    predictor: Predictor, spec: str | Path, out: str | Path, batch: int = 8, skip_bad: bool = False,
    overwrite: bool = False,
) -> dict:  # fmt: skip
    """Predict every image in `spec`; write ``<stem>_overlay.png`` and ``<stem>_mask.png`` (class ids) to `out`
    (checked first with `plan_outputs`)."""
    from tqdm.auto import tqdm

    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    files = plan_outputs(spec, out, overwrite)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done, skipped, start = 0, [], time.perf_counter()
    with tqdm(total=len(files), unit="img", desc="predict") as bar:
        for group in _chunks(files, batch):
            images, names = [], []
            for path in group:
                try:
                    with warnings.catch_warnings(record=True) as notices:
                        warnings.simplefilter("always")
                        images.append(read_image(path, reduce=True))
                    names.append(path)
                    for notice in notices:
                        bar.write(f"note: {notice.message}", file=sys.stderr)
                except ImageError as err:
                    if not skip_bad:
                        raise
                    skipped.append(str(err))
                    bar.write(f"skipped: {err}", file=sys.stderr)
            if images:
                for path, image, mask in zip(names, images, predictor.predict_batch(images), strict=True):
                    save_png(out / f"{path.stem}_overlay.png", predictor.draw(image, mask))
                    save_png(out / f"{path.stem}_mask.png", mask)
                    done += 1
            bar.update(len(group))
    seconds = time.perf_counter() - start
    return {"images": done, "skipped": skipped, "seconds": seconds, "images_per_second": done / max(seconds, 1e-9)}
