"""`show-data`: a grid of samples with their ground-truth masks, to look at a dataset before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils.files import atomic_write
from ..utils.outputs import MARK, check_suffix, guard, may_replace
from ..utils.overlay import overlay
from .datasets import split_pairs
from .images import read_image, read_mask, resolve_mask_mode
from .labels import Classes, Coding, default_class_names, read_classes_file

PICTURES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # written in the format the name says


def show_data(
    root: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    count: int = 8,
    mask_mode: str = "auto",
    num_classes: int | None = None,
    log=print,
    overwrite: bool = False,
) -> Path:
    """Write a grid PNG of `count` samples with their ground-truth masks overlaid, captioned, and the class legend
    (names and colours from the dataset's classes.json when it has one)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry is touched
    from matplotlib.patches import Patch

    out = Path(out)
    check_suffix(out, PICTURES, "show-data draws a picture")
    guard([out], [p for p in Path(root).rglob("*") if p.is_file()])
    may_replace(out, overwrite)
    found = read_classes_file(root)
    names = found["names"] if found else default_class_names(num_classes or 2)
    classes = Classes(tuple(names), tuple(tuple(c) for c in found["colors"]) if found and found["colors"] else ())
    coding = Coding(found["ignore_index"], found["reduce_labels"]) if found else Coding()
    pairs = split_pairs(root, split)
    mask_mode, note = resolve_mask_mode(mask_mode, [m for _, m in pairs], num_classes or len(names), coding)
    if note:
        log(note)
    pairs = pairs[:count]
    cols = min(4, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig = Figure(figsize=(4 * cols, 4 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    colors = np.array(classes.colors, dtype=np.uint8)
    for ax, (image_path, mask_path) in zip(axes.flat, pairs, strict=False):
        mask = read_mask(mask_path, mask_mode, coding=coding)
        ax.imshow(overlay(read_image(image_path), mask, colors=colors))
        present = sum(1 for i in range(len(names)) if (mask == i).any())
        ax.set_title(
            f"{image_path.name}\n{present} of {len(names)} classes, {(mask == 255).mean() * 100:.0f}% ignored",
            fontsize=9,
        )
    handles = [Patch(facecolor=c / 255, edgecolor="black", label=n) for n, c in zip(names, colors, strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(names)), fontsize=9, frameon=False)
    fig.suptitle(f"{Path(root).name}: {split} split, masks read as {mask_mode}", fontsize=11)
    fig.tight_layout(rect=(0, 0.035 + 0.02 * (len(names) // 6), 1, 1))
    kind = out.suffix.lower().lstrip(".").replace("jpeg", "jpg")
    mark = {"png": {"metadata": {"Software": MARK}}, "jpg": {"pil_kwargs": {"comment": MARK.encode()}}}.get(kind, {})
    atomic_write(out, lambda f: fig.savefig(f, format=kind, dpi=80, **mark))
    return out
