"""TensorBoard event files in the run folder (`train --tensorboard`): per-epoch scores and a few valid predictions.

`tensorboard --logdir runs` then shows every run folder under runs/ as one run, side by side.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..utils.overlay import caption, overlay, side_by_side
from ..utils.runtime import RunContext

PREVIEWS = 3  # valid images drawn each epoch
INSTALL = "pip install 'webdino-seg[tensorboard]'"


def check_available() -> None:
    """Raise ValueError, saying how to install it, where the tensorboard package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"--tensorboard needs the tensorboard package: {INSTALL}")


class Board:
    """Writes one epoch's scalars (losses, pixel accuracy, mIoU, per-class IoU, learning rate) and images (ground
    truth beside prediction for the first valid images) to event files in `folder`."""

    def __init__(self, folder: Path, class_names: list[str], colors: list[list[int]], first_epoch: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # on resume, what a stopped run wrote after its last saved epoch is dropped
        self.writer = SummaryWriter(str(folder), purge_step=first_epoch + 1 if first_epoch else None)
        self.class_names, self.colors = class_names, np.array(colors, dtype=np.uint8)

    def epoch(self, row: dict, previews: list[np.ndarray]) -> None:
        """Log a metrics.csv `row` and the preview images (H, W, 3 uint8) at its epoch."""
        step = row["epoch"]
        for key in ("loss", "pixel_acc", "miou"):
            for split in ("train", "valid"):
                self.writer.add_scalar(f"{key}/{split}", row[f"{split}_{key}"], step)
        for name in self.class_names:
            self.writer.add_scalar(f"valid_iou/{name}", row[f"valid_iou_{name}"], step)
        self.writer.add_scalar("lr", row["lr"], step)
        for i, image in enumerate(previews):
            self.writer.add_image(f"valid_preds/{i}", image, step, dataformats="HWC")
        self.writer.flush()

    @torch.inference_mode()
    def previews(
        self,
        net: torch.nn.Module,
        inputs: tuple,
        masks: torch.Tensor,
        images: torch.Tensor,
        *,
        context: RunContext,
    ) -> list[np.ndarray]:
        """Ground truth beside prediction for a batch: `inputs` are `net`'s, `images` the (N, 3, H, W) uint8
        pictures at the masks' size."""
        from ..models.segmentation import upsample

        with context.autocast():
            logits = net(*inputs).float()
        preds = upsample(logits, tuple(masks.shape[-2:])).argmax(1).to(torch.uint8).cpu().numpy()
        out = []
        for image, truth, pred in zip(
            images.permute(0, 2, 3, 1).cpu().numpy(), masks.cpu().numpy(), preds, strict=True
        ):
            left = caption(overlay(image, truth.astype(np.uint8), colors=self.colors), "ground truth")
            right = caption(overlay(image, pred, colors=self.colors), "prediction")
            out.append(side_by_side(left, right, gap=4))
        return out

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
