"""Evaluating a checkpoint on a split at the images' own resolution: a table and a JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import split_pairs
from .imageio import VOID, read_image, read_mask, resolve_mask_mode
from .io import atomic_write_text
from .metrics import ConfusionMatrix
from .predictor import Predictor


def evaluate(
    predictor: Predictor,
    model: str | Path,
    data: str | Path,
    split: str = "valid",
    mask_mode: str = "auto",
    out: str | Path | None = None,
    log=print,
) -> dict:
    """Score `predictor` (loaded from checkpoint `model`) on ``data/<split>_images`` at full resolution.

    Writes the report as JSON to `out` (default ``<model>.eval.json``) and returns it.
    """
    names = predictor.class_names
    pairs = split_pairs(data, split)
    mask_mode, note = resolve_mask_mode(mask_mode, [m for _, m in pairs], len(names))
    if note:
        log(note)
    cm = ConfusionMatrix(len(names))
    per_image = {}
    for image_path, mask_path in tqdm(pairs, desc="evaluate", unit="img"):
        truth = read_mask(mask_path, mask_mode, len(names))
        pred = predictor.predict(read_image(image_path))
        if pred.shape != truth.shape:
            raise ValueError(f"{image_path}: image size {pred.shape} differs from its mask {truth.shape}")
        one = ConfusionMatrix(len(names))
        one.update(torch.from_numpy(pred), torch.from_numpy(truth))
        cm.merge(one.mat)
        per_image[image_path.name] = one.miou()
    scores = np.array([v for v in per_image.values() if not np.isnan(v)])
    report = {
        "model": str(model),
        "data": str(data),
        "split": split,
        "images": len(pairs),
        "imgsz": list(predictor.imgsz),
        "tta": predictor.describe_tta() or None,
        **cm.summary(names),
        "mask_mode": mask_mode,
        "baseline": {k: v for k, v in cm.baseline().items() if k != "class"} | {"class": names[cm.baseline()["class"]]},
        "per_image_miou": {
            "mean": float(scores.mean()),
            "median": float(np.median(scores)),
            "min": float(scores.min()),
            "max": float(scores.max()),
            "worst": sorted(per_image, key=per_image.get)[:5],
        },
        "per_image": per_image,
        "void_label": VOID,
    }
    out = Path(out) if out else Path(str(model) + ".eval.json")
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    report["report_path"] = str(out)
    return report


def format_report(report: dict) -> str:
    """The report as a short table."""
    lines = [
        f"{report['split']}: {report['images']} images at full resolution (model input {report['imgsz']})",
        f"{'class':<16}{'IoU':>8}",
    ]
    lines += [f"{name:<16}{iou:>8.4f}" for name, iou in report["iou"].items()]
    stats = report["per_image_miou"]
    lines += [
        f"{'mIoU':<16}{report['miou']:>8.4f}",
        f"{'pixel accuracy':<16}{report['pixel_accuracy']:>8.4f}",
        f"all-{report['baseline']['class']} baseline (predicting {report['baseline']['class']} everywhere): "
        f"mIoU {report['baseline']['miou']:.4f}, pixel accuracy {report['baseline']['pixel_accuracy']:.4f}",
        f"per-image mIoU: mean {stats['mean']:.4f}, median {stats['median']:.4f}, min {stats['min']:.4f}, "
        f"max {stats['max']:.4f}; worst: {', '.join(stats['worst'])}",
        f"report: {report['report_path']}",
    ]
    if report.get("tta"):
        lines.insert(1, report["tta"])
    return "\n".join(lines)
