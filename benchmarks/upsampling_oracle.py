"""What the guided head's upsampler adds at boundaries, independent of the backbone's quality.

The backbone's features are replaced by the oracle token grid: each valid/train mask area-pooled to
the 14-pixel grid (the fraction of person in every patch). The bilinear oracle upsamples that grid
to the image and thresholds at 0.5 (what a token-grid head can reach at best). The guided oracle
trains only the `GuidedUpsampler` of the guided head on the 146 training images (the tutorial's
augmentations) to upsample the same grid with the image's help. Both are scored on the 24 valid
images at their full resolution, as `predict` would.

    python benchmarks/upsampling_oracle.py --data data/pennfudan [--imgsz 644 644] [--epochs 20]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from webdino_seg.data.datasets import SegmentationDataset
from webdino_seg.data.images import read_image, read_mask
from webdino_seg.models.heads import GuidedUpsampler
from webdino_seg.models.variants import IMAGENET_MEAN, IMAGENET_STD
from webdino_seg.utils.metrics import ConfusionMatrix

PATCH = 14


def oracle_grid(masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) class ids -> (B, 2, h, w): the area fractions of background and person per patch."""
    person = F.avg_pool2d((masks == 1).float().unsqueeze(1), PATCH)
    return torch.cat([1 - person, person], 1)


def coarse_input(grid: torch.Tensor) -> torch.Tensor:
    """The oracle fractions as centred maps for the upsampler (what token-grid logits would be)."""
    return 4 * grid - 2


def score(predict, valid: SegmentationDataset) -> float:
    """Valid mIoU at each image's full resolution: `predict(image, mask)` gives (2, h, w) scores at model size."""
    cm = ConfusionMatrix(2)
    with torch.no_grad():
        for i, (image_path, mask_path) in enumerate(valid.pairs):
            image, mask = valid[i]
            scores = predict(image[None], mask[None])
            full = read_mask(mask_path, valid.mask_mode)
            up = F.interpolate(scores, size=full.shape, mode="bilinear", align_corners=False)
            cm.update(up.argmax(1)[0], torch.from_numpy(full))
            assert read_image(image_path).shape[:2] == full.shape
    return cm.miou()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a prepared Penn-Fudan folder (146 train / 24 valid)")
    parser.add_argument("--imgsz", nargs=2, type=int, default=[644, 644])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = tuple(args.imgsz)
    common = {"imgsz": size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "mask_mode": "ids", "seed": args.seed}
    train_ds = SegmentationDataset(args.data, "train", augment=True, **common)
    valid = SegmentationDataset(args.data, "valid", augment=False, **common)

    bilinear = score(lambda image, mask: oracle_grid(mask), valid)
    print(f"bilinear oracle at {size[0]}x{size[1]}: valid mIoU {bilinear:.4f} ({len(valid)} images, full resolution)")

    torch.manual_seed(args.seed)
    upsampler = GuidedUpsampler(2)
    optimizer = torch.optim.AdamW(upsampler.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    print(f"guided upsampler: {sum(p.numel() for p in upsampler.parameters()):,} parameters, {args.epochs} epochs")
    for epoch in range(args.epochs):
        start, total = time.perf_counter(), 0.0
        upsampler.train()
        train_ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(train_ds, batch_size=args.batch, shuffle=True, num_workers=2,
                                             generator=torch.Generator().manual_seed(epoch))  # fmt: skip
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
        guided = score(lambda image, mask: upsampler(coarse_input(oracle_grid(mask)), image), valid)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / len(train_ds):.4f}, valid mIoU {guided:.4f} "
              f"({time.perf_counter() - start:.0f}s)", flush=True)  # fmt: skip
    print(f"result at {size[0]}x{size[1]}: bilinear oracle {bilinear:.4f}, guided oracle {guided:.4f} "
          f"(target: guided >= 0.975)")  # fmt: skip


if __name__ == "__main__":
    main()
