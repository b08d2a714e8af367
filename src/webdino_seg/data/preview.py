"""`show-data`: a grid of samples with their ground-truth masks, to look at a dataset before training."""

from __future__ import annotations

from pathlib import Path

from ..utils.files import atomic_write
from ..utils.overlay import overlay
from .datasets import split_pairs
from .images import read_image, read_mask, resolve_mask_mode


def show_data(
    root: str | Path, out: str | Path, split: str = "train", count: int = 8, mask_mode: str = "auto",
    num_classes: int = 2, log=print,
) -> Path:  # fmt: skip
    """Write a grid PNG of `count` samples with their ground-truth masks overlaid and captioned."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry is touched

    pairs = split_pairs(root, split)
    mask_mode, note = resolve_mask_mode(mask_mode, [m for _, m in pairs], num_classes)
    if note:
        log(note)
    pairs = pairs[:count]
    cols = min(4, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig = Figure(figsize=(4 * cols, 4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image_path, mask_path) in zip(axes.flat, pairs, strict=False):
        image = read_image(image_path)
        mask = read_mask(mask_path, mask_mode)
        ax.imshow(overlay(image, mask))
        share = (mask == 1).mean() * 100
        ax.set_title(f"{image_path.name}\nground truth: {share:.0f}% class 1", fontsize=9)
    fig.suptitle(f"{Path(root).name}: {split} split, masks read as {mask_mode}", fontsize=11)
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=80))
    return Path(out)
