"""Segmentation metrics from a confusion matrix accumulated over a whole split."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .constants import VOID

__all__ = ["VOID", "ConfusionMatrix", "bootstrap_miou", "boundary_band", "iou_of", "miou_of"]


class ConfusionMatrix:
    """Rows are true classes, columns predictions; pixels labelled 255 (void) are ignored."""

    def __init__(self, num_classes: int, device: torch.device | str | None = None) -> None:
        """`device`: where the counts are kept (a GPU run's counts stay on the GPU: updating them never waits)."""
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true class ids (any matching shapes)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target {tuple(target.shape)}")
        n = self.num_classes
        pred, target = pred.reshape(-1).to(torch.int64), target.reshape(-1).to(torch.int64)
        # void pixels count in an extra bin that is dropped: no boolean indexing, so no wait for the device
        idx = torch.where(target != VOID, target * n + pred, n * n)
        counts = torch.zeros(n * n + 1, dtype=torch.int64, device=idx.device).scatter_add_(0, idx, torch.ones_like(idx))
        self.mat += counts[: n * n].reshape(n, n).to(self.mat.device)

    def merge(self, other: torch.Tensor) -> None:
        """Add another matrix (e.g. reduced from other processes)."""
        self.mat += other.to(self.mat)

    def iou(self) -> torch.Tensor:
        """Per-class IoU; NaN for a class absent from both prediction and target."""
        return iou_of(self.mat)

    def miou(self) -> float:
        """Mean IoU over classes that occur (in prediction or target)."""
        return float(self.iou().nanmean())

    def pixel_accuracy(self) -> float:
        """Fraction of non-void pixels predicted right."""
        total = self.mat.sum()
        return float(self.mat.diag().sum().double() / total.double()) if total else float("nan")

    def baseline(self) -> dict:
        """Scores of predicting the most frequent true class everywhere (the all-background baseline)."""
        truth = self.mat.sum(1).double()
        total = float(truth.sum())
        if total == 0:
            return {"miou": float("nan"), "pixel_accuracy": float("nan"), "class": 0}
        majority = int(truth.argmax())
        present = int((truth > 0).sum())
        return {
            "miou": float(truth[majority]) / total / present,
            "pixel_accuracy": float(truth[majority]) / total,
            "class": majority,
        }

    def summary(self, class_names: list[str] | None = None) -> dict:
        """mIoU, pixel accuracy and per-class IoU as plain numbers."""
        names = class_names or [str(i) for i in range(self.num_classes)]
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "iou": {name: float(v) for name, v in zip(names, self.iou().tolist(), strict=True)},
        }


def boundary_band(target: torch.Tensor, width: int) -> torch.Tensor:
    """`target` (..., H, W) class ids with pixels farther than `width` pixels (chessboard distance) from a boundary
    between two labelled classes set to void: scored with a ConfusionMatrix, it gives the boundary-band IoU."""
    if width < 0:
        raise ValueError(f"band width must be 0 or more pixels, got {width}")
    t = target.reshape(-1, 1, *target.shape[-2:]).to(torch.int64)
    edge = torch.zeros_like(t, dtype=torch.bool)
    for dim in (2, 3):  # a pixel whose right or lower neighbour is another labelled class: both are on the boundary
        a, b = t.narrow(dim, 0, t.shape[dim] - 1), t.narrow(dim, 1, t.shape[dim] - 1)
        differ = (a != b) & (a != VOID) & (b != VOID)
        edge.narrow(dim, 0, t.shape[dim] - 1).logical_or_(differ)
        edge.narrow(dim, 1, t.shape[dim] - 1).logical_or_(differ)
    band = F.max_pool2d(edge.float(), 2 * width + 1, stride=1, padding=width) > 0
    return torch.where(band, t, torch.full_like(t, VOID)).reshape(target.shape).to(target.dtype)


RESAMPLES = 1000  # bootstrap resamples of the images, unless said otherwise
CI_LEVEL = 0.95


def iou_of(mats: torch.Tensor) -> torch.Tensor:
    """Per-class IoU of each of a stack of (..., C, C) confusion matrices (rows true, columns predicted); NaN for a
    class absent from both prediction and truth."""
    mats = mats.double()
    inter = mats.diagonal(dim1=-2, dim2=-1)
    union = mats.sum(-2) + mats.sum(-1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


def miou_of(mats: torch.Tensor) -> torch.Tensor:
    """mIoU of each of a stack of (..., C, C) confusion matrices, as `ConfusionMatrix.miou` (classes absent from
    both prediction and truth left out)."""
    return iou_of(mats).nanmean(-1)


def bootstrap_scores(per_image: torch.Tensor, resamples: int = RESAMPLES, seed: int = 0) -> torch.Tensor:
    """mIoU of each of `resamples` draws of the images again with replacement, for each of K candidates scored on
    the same N images, (K, N, C, C) per-image confusion matrices: the draws are the same for every candidate
    (paired), so differences between candidates' scores come from the candidates, not the draws. Returns
    (K, resamples), seeded: the same every time. Drawn 100 at a time (memory stays at 100 x N x C x C)."""
    k, n = per_image.shape[:2]
    generator = torch.Generator().manual_seed(seed)
    flat = per_image.reshape(k, n, -1).double()
    scores = []
    for start in range(0, resamples, 100):
        picks = torch.randint(0, n, (min(100, resamples - start), n), generator=generator)
        counts = torch.zeros(len(picks), n, dtype=torch.float64).scatter_add_(
            1, picks, torch.ones_like(picks, dtype=torch.float64)
        )
        scores.append(miou_of((counts @ flat).reshape(k, len(picks), *per_image.shape[2:])))
    return torch.cat(scores, 1)


def interval(scores: torch.Tensor, level: float = CI_LEVEL) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap `scores` (1-D)."""
    tail = (1 - level) / 2
    low, high = torch.quantile(scores.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high


def bootstrap_miou(
    per_image: torch.Tensor, resamples: int = RESAMPLES, seed: int = 0, level: float = CI_LEVEL
) -> tuple[float, float]:
    """The `level` percentile interval of the mIoU when the images are drawn again with replacement: each of
    `resamples` draws sums the (N, C, C) per-image confusion matrices it picked (seeded: the same interval every
    time). With one image there is nothing to resample: the interval is its score twice."""
    if per_image.shape[0] == 0:
        return float("nan"), float("nan")
    return interval(bootstrap_scores(per_image[None], resamples, seed)[0], level)
