"""What a finished run leaves besides checkpoints: the training curves (loss.png, accuracy.png, miou.png) and
valid_preds/ (ground truth beside the best model's prediction for every valid image)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import read_image, read_mask
from ..models.checkpoint import load_model, save_model
from ..models.segmentation import SegmentationModel, model_input, upsample
from ..utils.files import atomic_write, atomic_write_text, save_png
from ..utils.metrics import ConfusionMatrix, bootstrap_miou, miou_of
from ..utils.overlay import caption, legend, overlay, side_by_side
from ..utils.runtime import RunContext
from .config import TrainConfig
from .runfolder import RunFolder
from .timings import Timings

CURVES = {
    "loss.png": ("loss", "Loss"),
    "accuracy.png": ("pixel_acc", "Pixel accuracy"),
    "miou.png": ("miou", "mIoU"),
}
BASELINE_KEYS = {"pixel_acc": "pixel_accuracy", "miou": "miou"}


def save_curves(
    history: list[dict], run: str | Path, title: str | None = None, baseline: dict | None = None
) -> list[Path]:
    """Plot each metric per epoch for train and valid into the run folder; return the files written.

    The epoch with the best valid mIoU is marked on every plot; `baseline` (the all-background scores
    on the valid split) is drawn as a dashed line on the accuracy and mIoU plots.
    """
    if not history:
        return []
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry is touched

    epochs = [row["epoch"] for row in history]
    best = max(history, key=lambda row: row["valid_miou"])
    written = []
    for filename, (key, label) in CURVES.items():
        fig = Figure(figsize=(8, 5))
        ax = fig.subplots()
        ax.plot(epochs, [row[f"train_{key}"] for row in history], color="tab:blue", label="train")
        ax.plot(epochs, [row[f"valid_{key}"] for row in history], color="tab:red", label="valid")
        if baseline and key in BASELINE_KEYS:
            level = baseline[BASELINE_KEYS[key]]
            ax.axhline(level, color="grey", linestyle="--", label=f"valid, all-background baseline ({level:.3f})")
        ax.axvline(best["epoch"], color="tab:green", linestyle=":", alpha=0.8)
        value = best[f"valid_{key}"]
        marker = f"epoch {best['epoch']}, best valid mIoU: valid {label.lower()} {value:.3f}"
        ax.plot([best["epoch"]], [value], "o", color="tab:green", label=marker)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label}" if title else label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(atomic_write(Path(run) / filename, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100)))
    return written


def finish_run(
    run: RunFolder,
    model: SegmentationModel,
    identity: dict,
    meta: dict,
    *,
    history: list[dict],
    valid_pairs: list[tuple[Path, Path]],
    cfg: TrainConfig,
    context: RunContext,
    clock: Timings | None = None,
) -> dict | None:
    """Final artifacts: final_model.pth, the curves and valid_preds/; the kept feature chunks are removed. The
    time of each goes into `clock` (stage ``finish``). Returns the best model's valid mIoU at full size with its
    bootstrap interval over the images (None without a best model)."""
    clock = clock or Timings()
    with clock.part("finish", "final model"):
        save_model(run / "final_model.pth", model, identity, meta)
    with clock.part("finish", "curves"):
        save_curves(history, run.path, title=run.path.name, baseline=meta.get("baseline"))
    best_path = run / "best_model_iou.pth"
    scores = None
    if best_path.exists():
        with clock.part("finish", "valid_preds"):
            best, ckpt = load_model(best_path, backbone=model.backbone)
            best = best.to(context.device)
            mats = write_valid_preds(run / "valid_preds", best, valid_pairs, cfg=cfg, ckpt=ckpt, context=context)
            scores = write_valid_scores(run / VALID_SCORES, mats, [image.name for image, _ in valid_pairs], cfg)
    shutil.rmtree(run.features, ignore_errors=True)
    return scores


VALID_SCORES = "valid_scores.json"  # the best model's scores on each valid image at full size


def write_valid_scores(path: Path, mats: torch.Tensor, names: list[str], cfg: TrainConfig) -> dict:
    """Write (atomically) and return the scores of the (N, C, C) per-image confusion matrices `mats` of the valid
    images `names`: mIoU with its bootstrap interval, pixel accuracy, per-class IoU, and each image's matrix (so
    candidates can be compared image by image, as a sweep does)."""
    whole = ConfusionMatrix(cfg.num_classes)
    whole.mat = mats.sum(0)
    scores = {
        "model": "best_model_iou.pth",
        "miou": float(miou_of(mats.sum(0))),
        "miou_ci": list(bootstrap_miou(mats)),
        "pixel_acc": whole.pixel_accuracy(),
        "iou": {n: v if v == v else None for n, v in zip(cfg.class_names, whole.iou().tolist(), strict=True)},
        "images": len(mats),
        "confusion": {name: mat.tolist() for name, mat in zip(names, mats, strict=True)},
    }
    atomic_write_text(path, json.dumps(scores, indent=1) + "\n")
    return scores


@torch.inference_mode()
def write_valid_preds(
    out: Path,
    model: SegmentationModel,
    pairs: list[tuple[Path, Path]],
    *,
    cfg: TrainConfig,
    ckpt: dict,
    context: RunContext,
) -> torch.Tensor:
    """``out/<name>.png``: ground truth beside the model's prediction, at full resolution, each side captioned
    (image name, "ground truth"; "prediction" and the image's mIoU), over a legend of the classes present with
    each one's IoU on this image. Returns the (N, C, C) confusion matrix of each image."""
    device = context.device
    mean = torch.tensor(ckpt["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"], device=device).view(1, 3, 1, 1)
    colors = np.array(cfg.class_colors, dtype=np.uint8)
    coding = cfg.coding()  # read once: it looks at the data's classes.json
    model.eval()
    out.mkdir(exist_ok=True)
    mats = []
    for image_path, mask_path in tqdm(pairs, desc="valid_preds", leave=False):
        image = read_image(image_path)
        truth = read_mask(mask_path, cfg.mask_mode, coding=coding)
        pixels = torch.from_numpy(image).to(device).permute(2, 0, 1)[None]
        with context.autocast():
            logits = model(model_input(pixels, cfg.imgsz, mean, std)).float()
        pred = upsample(logits, image.shape[:2]).max(1).indices[0].to(torch.uint8).cpu().numpy()
        one = ConfusionMatrix(cfg.num_classes)
        one.update(torch.from_numpy(pred), torch.from_numpy(truth))
        left = caption(overlay(image, truth, colors=colors), f"{image_path.name}: ground truth")
        right = caption(overlay(image, pred, colors=colors), f"prediction: mIoU {one.miou():.3f}")
        pair = side_by_side(left, right)
        ious = one.iou().tolist()
        names = [f"{n} {iou:.3f}" if iou == iou else n for n, iou in zip(cfg.class_names, ious, strict=True)]
        present = {int(v) for v in np.unique(np.concatenate([truth.ravel(), pred.ravel()])) if v < len(names)}
        save_png(out / f"{image_path.stem}.png", np.concatenate([pair, legend(names, colors, pair.shape[1], present)]))
        mats.append(one.mat)
    return torch.stack(mats) if mats else torch.zeros(0, cfg.num_classes, cfg.num_classes, dtype=torch.int64)
