"""What the guided head's upsampler takes from the image, independent of the backbone's quality.

The backbone's features are replaced by the oracle token grid: each mask area-pooled to the 14-pixel
grid (the fraction of person in every patch), given to the upsampler as the logits of a calibrated
token-grid head (log fractions). Only the `GuidedUpsampler` is trained, on the training images minus a
held-out design split (the tutorial's augmentations); its design and settings were chosen on that
design split, which each epoch reports. With `--final` the 24 valid images are scored once, at the end,
at their full resolution as `predict` would, beside the controls (without it, the design split is):

- bilinear: the fractions upsampled bilinearly (what a token-grid head can reach without learning);
- blank guide / shuffled guide: the trained upsampler given a uniform grey image, or another image of the
  scored split: what it gains without the right image;
- area-preserving bilinear: the guided head's own way of filling a cell (each class keeps its share of
  the cell) ranked by the bilinear upsampling instead of the image: what that rule gives with no image;
- fitted grid: a logit grid of the token grid's size fitted to each scored mask, then bilinear (an
  upper bound for any head that only upsamples a token grid, learned or not);
- true mask at the output size: the upsampler's output size (1/4 of the input) filled from the true mask,
  each output pixel decided (0/1) or as its person fraction (soft): what a perfect ranking of the pixels
  reaches at that size, and what calibrated sub-pixel fractions would add.

Each with mIoU over all pixels and over the boundary band (pixels within --band pixels of a true
person/background boundary at full resolution), where a 14-pixel grid is coarse.

    python benchmarks/upsampling_oracle.py --data data/pennfudan --final [--imgsz 644 644] [--epochs 12]
        [--json benchmarks/measured/upsampling-oracle-cpu.json]

The JSON is what `tools/tables.py` makes the table in docs/training.md from.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from measured_json import write_measured

from webdino_seg.data.datasets import SegmentationDataset
from webdino_seg.data.images import read_mask
from webdino_seg.models.heads import GuidedUpsampler, area_preserving
from webdino_seg.models.variants import IMAGENET_MEAN, IMAGENET_STD
from webdino_seg.utils.metrics import ConfusionMatrix, boundary_band

PATCH = 14
Predict = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (image, mask, index) -> (1, 2, h, w) scores


def oracle_grid(masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) class ids -> (B, 2, h, w): the area fractions of background and person per patch."""
    person = F.avg_pool2d((masks == 1).float().unsqueeze(1), PATCH)
    return torch.cat([1 - person, person], 1)


def coarse_input(grid: torch.Tensor) -> torch.Tensor:
    """The oracle fractions as a calibrated token-grid head's logits (their softmax is the fractions)."""
    return grid.clamp_min(1e-3).log()


def score(predict: Predict, split: SegmentationDataset, band: int) -> tuple[float, float]:
    """mIoU and boundary-band mIoU over a split, at each image's full resolution."""
    whole, near = ConfusionMatrix(2), ConfusionMatrix(2)
    with torch.no_grad():
        for i, (_, mask_path) in enumerate(split.pairs):
            image, mask = split[i]
            full = torch.from_numpy(read_mask(mask_path, split.mask_mode)).long()
            scores = predict(image[None], mask[None], i)
            pred = F.interpolate(scores.float(), size=full.shape, mode="bilinear", align_corners=False).argmax(1)[0]
            whole.update(pred, full)
            near.update(pred, boundary_band(full, band))
    return whole.miou(), near.miou()


def fitted_grid(split: SegmentationDataset, size: tuple[int, int], steps: int = 400) -> Predict:
    """A logit grid fitted to each of the split's masks at full resolution through bilinear upsampling."""

    def predict(image: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
        full = torch.from_numpy(read_mask(split.pairs[i][1], split.mask_mode)).float()[None, None]
        with torch.enable_grad():
            coarse = coarse_input(oracle_grid(mask))
            logit = (coarse[:, 1:] - coarse[:, :1]).requires_grad_(True)
            optimizer = torch.optim.Adam([logit], lr=0.1)
            for _ in range(steps):
                up = F.interpolate(logit, size=full.shape[-2:], mode="bilinear", align_corners=False)
                loss = F.binary_cross_entropy_with_logits(up, full)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return torch.cat([-logit, logit], 1).detach()

    return predict


def area_preserving_bilinear(upsampler: GuidedUpsampler) -> Predict:
    """The upsampler's cell-filling rule with the bilinear upsampling of the logits as the only ranking."""

    def predict(image: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
        coarse = coarse_input(oracle_grid(mask))
        cell = upsampler.cell(image.shape[-2], coarse.shape[-2])
        size = (coarse.shape[-2] * cell, coarse.shape[-1] * cell)
        ranking = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        return area_preserving(ranking, coarse.softmax(1), cell)

    return predict


def true_output(upsampler: GuidedUpsampler, hard: bool = False) -> Predict:
    """The true mask at the upsampler's output size (area fractions per output pixel, or 0/1 with `hard`): what a
    perfect upsampler of that size reaches, soft or with every output pixel decided."""

    def predict(image: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
        h, w = mask.shape[-2] // PATCH, mask.shape[-1] // PATCH
        cell = upsampler.cell(image.shape[-2], h)
        person = F.adaptive_avg_pool2d((mask == 1).float().unsqueeze(1), (h * cell, w * cell))
        if hard:
            person = (person > 0.5).float()
        return coarse_input(torch.cat([1 - person, person], 1))

    return predict


def split_design(train: SegmentationDataset, design: int, seed: int) -> list:
    """Hold `design` training pairs out (seeded): returns them; `train` keeps the rest."""
    order = list(range(len(train.pairs)))
    random.Random(seed).shuffle(order)
    held = [train.pairs[i] for i in sorted(order[:design])]
    train.pairs = [train.pairs[i] for i in sorted(order[design:])]
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a prepared Penn-Fudan folder (146 train / 24 valid)")
    parser.add_argument("--imgsz", nargs=2, type=int, default=[644, 644])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--design", type=int, default=26, help="training images held out to choose the design")
    parser.add_argument("--band", type=int, default=3, help="boundary band half-width, full-resolution pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--final", action="store_true", help="score the valid split (once the design is chosen)")
    parser.add_argument("--json", type=Path, help="also write the figures here (tools/tables.py reads them)")
    args = parser.parse_args()
    size = tuple(args.imgsz)
    common = {"imgsz": size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "mask_mode": "ids", "seed": args.seed}
    train_ds = SegmentationDataset(args.data, "train", augment=True, **common)
    design = SegmentationDataset(args.data, "train", augment=False, **common)
    design.pairs = split_design(train_ds, args.design, args.seed)
    valid = SegmentationDataset(args.data, "valid", augment=False, **common)

    torch.manual_seed(args.seed)
    upsampler = GuidedUpsampler(2)
    optimizer = torch.optim.AdamW(upsampler.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)

    def guided(image: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
        return upsampler(coarse_input(oracle_grid(mask)), image)

    params = sum(p.numel() for p in upsampler.parameters())
    print(
        f"guided upsampler: {params:,} parameters; {len(train_ds)} training images, {len(design)} held out for the "
        f"design, {args.epochs} epochs, seed {args.seed}"
    )
    start = time.perf_counter()
    for epoch in range(args.epochs):
        upsampler.train()
        train_ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            train_ds,
            batch_size=args.batch,
            shuffle=True,
            num_workers=2,
            generator=torch.Generator().manual_seed(args.seed + epoch),
        )
        total = 0.0
        for images, masks in loader:
            logits = upsampler(coarse_input(oracle_grid(masks)), images)
            up = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(up, masks, ignore_index=255)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(images)
        schedule.step()
        upsampler.eval()
        held, held_band = score(guided, design, args.band)
        print(
            f"epoch {epoch + 1}/{args.epochs}: train loss {total / len(train_ds):.4f}, design split mIoU {held:.4f} "
            f"(band {held_band:.4f}), {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    seconds = time.perf_counter() - start

    scored = valid if args.final else design
    images = [scored[i][0][None] for i in range(len(scored))]
    grey = torch.zeros_like(images[0])  # the mean colour after normalisation
    rows = {
        "bilinear (no learning)": lambda image, mask, i: oracle_grid(mask),
        "guided": guided,
        "guided, blank guide": lambda image, mask, i: upsampler(coarse_input(oracle_grid(mask)), grey),
        "guided, shuffled guide": lambda image, mask, i: upsampler(
            coarse_input(oracle_grid(mask)), images[(i + 1) % len(images)]
        ),
        "area-preserving bilinear (no image)": area_preserving_bilinear(upsampler),
        "fitted grid + bilinear (bound)": fitted_grid(scored, size),
        "true mask at the output size, 0/1": true_output(upsampler, hard=True),
        "true mask at the output size, soft": true_output(upsampler),
    }
    results = {name: score(fn, scored, args.band) for name, fn in rows.items()}
    which = "valid split, scored once" if args.final else "design split (--final scores the valid split)"
    print(
        f"\n{which}: {len(scored)} images at full resolution; input {size[0]}x{size[1]}, token grid "
        f"{size[0] // PATCH}x{size[1] // PATCH}; band: within {args.band} px of a boundary; training "
        f"{seconds:.0f} s on this machine ({args.epochs} epochs)"
    )
    print(f"{'':<38}{'mIoU':>8}{'band mIoU':>11}")
    for name, (miou, band) in results.items():
        print(f"{name:<38}{miou:>8.4f}{band:>11.4f}")
    base, ours = results["bilinear (no learning)"][0], results["guided"][0]
    allowed = base + (ours - base) / 3
    print(f"controls must stay at or below bilinear + 1/3 of the guided gain: {allowed:.4f}")
    if args.json:
        write_measured(
            args.json,
            "upsampling-oracle",
            split=which,
            images=len(scored),
            imgsz=list(size),
            grid=[size[0] // PATCH, size[1] // PATCH],
            band_px=args.band,
            epochs=args.epochs,
            seed=args.seed,
            train_images=len(train_ds),
            design_images=len(design),
            train_s=seconds,
            rows=[{"name": n, "label": LABELS[n], "miou": m, "band_miou": b} for n, (m, b) in results.items()],
        )


# how the docs name each row (tools/tables.py)
LABELS = {
    "bilinear (no learning)": "bilinear (no learning)",
    "guided": "**guided** (trained)",
    "guided, blank guide": "guided, blank image as guide",
    "guided, shuffled guide": "guided, another valid image as guide",
    "area-preserving bilinear (no image)": "the guided head's cell-filling rule ranked by bilinear, no image",
    "fitted grid + bilinear (bound)": "a logit grid fitted to each mask, then bilinear (bound for any token-grid head)",
    "true mask at the output size, 0/1": (
        "the true mask at the guided head's output size (1/4 of the input), each pixel 0 or 1"
    ),
    "true mask at the output size, soft": "the same, each pixel its true person fraction",
}


if __name__ == "__main__":
    main()
