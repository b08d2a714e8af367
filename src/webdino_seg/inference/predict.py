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
from .masks import check_mask_values, encode_mask
from .masks import save_probs as write_probs
from .predictor import Predictor, class_ids
from .settings import DEFAULTS


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
    spec: str | Path, out: str | Path, overwrite: bool = False, inputs: tuple[Path, ...] = (), probs: bool = False
) -> list[Path]:
    """The images of `spec`, after checking that writing their overlays and masks (and with `probs`, their
    probabilities) into `out` destroys nothing: no input (the images, `inputs` such as the model) is written over,
    no two images write one file, and a file webdino-seg did not write is replaced only with `overwrite`."""
    out = check_output_dir(out)
    files = list_images(spec)
    names = ["overlay.png", "mask.png", *(["probs.npz"] if probs else [])]
    planned = [out / f"{p.stem}_{name}" for p in files for name in names]
    guard(planned, [*files, *inputs])
    for path in planned:
        may_replace(path, overwrite)
    return files


def predict_paths(
    predictor: Predictor,
    spec: str | Path,
    out: str | Path,
    *,
    batch: int = DEFAULTS.batch,
    skip_bad: bool = False,
    overwrite: bool = False,
    mask_values: str = DEFAULTS.mask_values,
    save_probs: bool = False,
) -> dict:
    """Predict every image in `spec`; write ``<stem>_overlay.png`` and ``<stem>_mask.png`` (class ids, or as
    `mask_values` says) to `out`, and with `save_probs` ``<stem>_probs.npz`` (checked first with `plan_outputs`)."""
    from tqdm.auto import tqdm

    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    check_mask_values(mask_values, len(predictor.class_names))
    files = plan_outputs(spec, out, overwrite, probs=save_probs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done, skipped, start, noted = 0, [], time.perf_counter(), False
    notes = {"Precision": predictor.precision, "Engine": predictor.engine}  # what each PNG's mask was computed in
    with tqdm(total=len(files), unit="img", desc="predict") as bar:
        for group in _chunks(files, batch):
            names, images = _read_group(group, skip_bad, skipped, bar)
            for path, image in zip(names, images, strict=True):
                if not noted and (note := predictor.shrink_note(image, str(path))):
                    bar.write(f"note: {note}", file=sys.stderr)
                    noted = True
            if images:
                for path, image, mask, probs in zip(
                    names, images, *_predict(predictor, images, save_probs), strict=True
                ):
                    save_png(out / f"{path.stem}_overlay.png", predictor.draw(image, mask), notes)
                    save_png(out / f"{path.stem}_mask.png", encode_mask(mask, mask_values, predictor.colors), notes)
                    if probs is not None:
                        write_probs(out / f"{path.stem}_probs.npz", probs, predictor.class_names)
                    done += 1
            bar.update(len(group))
    seconds = time.perf_counter() - start
    return {"images": done, "skipped": skipped, "seconds": seconds, "images_per_second": done / max(seconds, 1e-9)}


def _predict(predictor: Predictor, images: list, with_probs: bool) -> tuple[list, list]:
    """Masks, and with `with_probs` the probabilities (as NumPy) they are the argmax of (else Nones)."""
    if not with_probs:
        return predictor.predict_batch(images), [None] * len(images)
    probs = predictor.probabilities(images)
    return [class_ids(p) for p in probs], [p.float().cpu().numpy() for p in probs]


def _read_group(group: list[Path], skip_bad: bool, skipped: list[str], bar) -> tuple[list[Path], list]:
    """The readable images of `group` (large ones reduced), their notes written; unreadable ones fail, or with
    `skip_bad` are said and listed in `skipped`."""
    names, images = [], []
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
    return names, images
