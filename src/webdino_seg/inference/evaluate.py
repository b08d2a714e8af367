"""Evaluating a checkpoint on a split at the images' own resolution: a table and a JSON report."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.datasets import is_flat, split_pairs
from ..data.images import read_image, read_mask, resolve_mask_mode
from ..data.labels import Coding
from ..data.splitrule import check_disjoint
from ..models.checkpoint import read_checkpoint, run_id_of
from ..utils.files import atomic_write_text, check_output_dir, check_output_file
from ..utils.metrics import CI_LEVEL, RESAMPLES, VOID, ConfusionMatrix, bootstrap_miou
from ..utils.outputs import MARK, OutputError, check_suffix, guard, may_replace, outside
from .formats import for_file
from .names import EVAL_SPLITS
from .predictor import Predictor
from .report import CURVES, ReportWriter
from .settings import DEFAULTS


def evaluate(
    predictor: Predictor,
    model: str | Path,
    data: str | Path,
    *,
    split: str = DEFAULTS.split,
    mask_mode: str = "auto",
    out: str | Path | None = None,
    log=print,
    report_dir: str | Path | None = None,
    overwrite: bool = False,
    ignore_index: int | None = None,
    reduce_labels: bool | None = None,
) -> dict:
    """Score `predictor` (loaded from checkpoint `model`) on ``data/<split>_images`` at full resolution.

    On a flat images/ + masks/ folder, `split` (valid, train or all) keeps to the split the model's run
    recorded, and says which images it scored; on split folders, `split` is train, valid, test or all (every
    split). Masks are read as the model's run read them (its ignore value, ADE20K's shift) unless `ignore_index`
    or `reduce_labels` says otherwise. Writes the report as JSON to `out` (default ``<model>.eval.json``) and
    returns it; with `report_dir`, also an HTML report there (``index.html``: scores, confusion matrix,
    curves, every image worst first).
    """
    out = plan_evaluate(model, data, out, report_dir, overwrite)  # before anything is written
    writer = ReportWriter(report_dir, predictor.colors) if report_dir is not None else None
    try:
        overrides = {
            k: v for k, v in (("ignore_index", ignore_index), ("reduce_labels", reduce_labels)) if v is not None
        }
        return _evaluate(predictor, model, data, split, mask_mode, out, log, writer, overrides)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise


def _evaluate(
    predictor: Predictor,
    model: str | Path,
    data: str | Path,
    split: str,
    mask_mode: str,
    out: Path,
    log,
    writer: ReportWriter | None,
    labels: dict,
) -> dict:
    """`evaluate` once its outputs are planned."""
    names = predictor.class_names
    meta = _checkpoint(model)
    coding = dataclasses.replace(Coding.from_dict(meta.get("labels")), **labels)  # the flags over the record
    pairs, split = _pairs(Path(data), split, meta.get("split"), log)
    mask_mode, note = resolve_mask_mode(mask_mode, [m for _, m in pairs], len(names), coding)
    if note:
        log(note)
    cm, per_image = _score(predictor, pairs, mask_mode, writer, coding)
    report = {
        "format": f"{MARK}/eval",
        "model": str(model),
        "data": str(data),
        "split": split,
        "images": len(pairs),
        "labelled_pixels": int(cm.mat.sum()),  # scored: every pixel but the ignored ones
        "imgsz": list(predictor.imgsz),
        "tta": predictor.describe_tta() or None,
        "tile": predictor.tile,
        "precision": predictor.precision,
        "engine": predictor.engine,
        **cm.summary(names),
        "miou_ci": list(bootstrap_miou(cm.per_image)),
        "ci": {"level": CI_LEVEL, "resamples": RESAMPLES, "seed": 0, "over": "images, drawn again with replacement"},
        "mask_mode": mask_mode,
        "baseline": {k: v for k, v in cm.baseline().items() if k != "class"} | {"class": names[cm.baseline()["class"]]},
        "per_image_miou": _spread(per_image),
        "per_image": per_image,
        "void_label": VOID,
    }
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    report["report_path"] = str(out)
    if writer is not None:
        page = writer.write(report, cm.mat.numpy(), model_info(model), curves_folder(model, meta))
        report["html_report"] = str(page)
    return report


def plan_evaluate(
    model: str | Path, data: str | Path, out: str | Path | None, report_dir: str | Path | None, overwrite: bool
) -> Path:
    """The JSON report's path (default ``<model>.eval.json``), after checking that neither it nor the HTML report
    writes onto an input (the model, the data, the run's curves) or over a file webdino-seg did not write
    (unless `overwrite`); a report folder that holds inputs is refused."""
    out = check_output_file(Path(out) if out else Path(str(model) + ".eval.json"))
    check_suffix(out, (".json",), "evaluate writes its scores as JSON")
    inputs = [Path(model), *(p for p in Path(data).rglob("*") if p.is_file())] if Path(data).is_dir() else [Path(model)]
    guard([out], inputs)
    may_replace(out, overwrite)
    if report_dir is not None:
        folder = check_output_dir(report_dir, "--report")
        outside(folder, [Path(data)], "--report")
        inside = [
            p
            for p in [*inputs, *(Path(model).parent / c for c in CURVES)]
            if p.exists() and p.resolve().is_relative_to(folder.resolve())
        ]
        if inside:
            raise OutputError(
                f"--report {folder}: holds inputs of this evaluation (e.g. {inside[0]}); a report "
                "goes into a folder of its own, e.g. RUN/report"
            )
        if folder.exists() and any(folder.iterdir()):
            may_replace(folder, overwrite, "--report")
    return out


def curves_folder(model: str | Path, ckpt: dict) -> Path | None:
    """The model's folder when it is the run that wrote the model (its run.json has the checkpoint's run id),
    else None: the curves of some other run are never shown as this model's."""
    folder = Path(model).parent
    return folder if ckpt.get("run_id") and run_id_of(folder) == ckpt["run_id"] else None


def _checkpoint(model: str | Path) -> dict:
    """The model checkpoint's record (an exported model keeps none of it: {})."""
    return {} if for_file(model) is not None else read_checkpoint(model)


def _pairs(root: Path, split: str, recorded: dict | None, log) -> tuple[list[tuple[Path, Path]], str]:
    """The pairs to score and the name of what they are. A flat folder is scored by the split the model's run
    recorded (``all``: every image); without a record, all of it, said so."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"--split {split}: use one of {', '.join(EVAL_SPLITS)}")
    if not is_flat(root):
        present = [s for s in ("train", "valid", "test") if (root / f"{s}_images").is_dir()]
        splits = {s: split_pairs(root, s) for s in present}
        check_disjoint({s: [image for image, _ in pairs] for s, pairs in splits.items()})  # no image in two
        if split == "all":
            return [pair for s in present for pair in splits[s]], split
        if split not in present:
            raise ValueError(
                f"--split {split}: {root} has no {split}_images/ + {split}_masks/; its splits are "
                f"{', '.join(present) or 'none'} (--split all scores every one)"
            )
        return splits[split], split
    every = split_pairs(root, "all")
    if split == "all" or recorded is None:
        why = "" if split == "all" else " (the model records no split of this folder; --split all to say so)"
        log(f"scoring all {len(every)} images of the flat folder {root}{why}")
        return every, "all"
    if split not in ("train", "valid"):
        raise ValueError(f"--split {split}: a flat folder has the splits valid, train and all")
    by_name = {image.name: (image, mask) for image, mask in every}
    gone = [name for name in recorded[split] if name not in by_name]
    if gone:
        raise ValueError(
            f"{root}: {len(gone)} image(s) of the model's {split} split are not in the folder (e.g. "
            f"{gone[0]}); is it the folder the model was trained on?"
        )
    others = len(every) - len(set(recorded["train"]) | set(recorded["valid"]))
    extra = f"; {others} image(s) added since are in neither split and not scored" if others > 0 else ""
    log(
        f"scoring the {len(recorded[split])} {split} images of the split the model's run recorded{extra} "
        "(--split train|valid|all)"
    )
    return [by_name[name] for name in sorted(recorded[split])], split


def _score(
    predictor: Predictor,
    pairs: list[tuple[Path, Path]],
    mask_mode: str,
    writer: ReportWriter | None,
    coding: Coding,
) -> tuple[ConfusionMatrix, dict[str, float]]:
    """The confusion matrix over every pair at full resolution, and each image's mIoU (and its report card)."""
    names = predictor.class_names
    cm, per_image, noted, mats = ConfusionMatrix(len(names)), {}, False, []
    for image_path, mask_path in (bar := tqdm(pairs, desc="evaluate", unit="img")):
        truth = read_mask(mask_path, mask_mode, len(names), coding)
        image = read_image(image_path)
        if not noted and (note := predictor.shrink_note(image, str(image_path))):
            bar.write(f"note: {note}", file=sys.stderr)
            noted = True
        pred = predictor.predict(image)
        if pred.shape != truth.shape:
            raise ValueError(f"{image_path}: image size {pred.shape} differs from its mask {truth.shape}")
        one = ConfusionMatrix(len(names))
        one.update(torch.from_numpy(pred), torch.from_numpy(truth))
        cm.merge(one.mat)
        mats.append(one.mat)
        per_image[image_path.name] = one.miou()
        if writer is not None:
            ious = {f"iou_{n}": float(v) for n, v in zip(names, one.iou().tolist(), strict=True)}
            writer.add(image_path.name, image, truth, pred, {"miou": one.miou(), **ious})
    cm.per_image = torch.stack(mats) if mats else torch.zeros(0, len(names), len(names), dtype=torch.int64)
    return cm, per_image


def _spread(per_image: dict[str, float]) -> dict:
    """Mean, median, min and max of the per-image mIoUs (images without a labelled class left out), and the worst."""
    scores = np.array([v for v in per_image.values() if not np.isnan(v)])
    return {
        "mean": float(scores.mean()),
        "median": float(np.median(scores)),
        "min": float(scores.min()),
        "max": float(scores.max()),
        "worst": sorted(per_image, key=per_image.get)[:5],
    }


def model_info(model: str | Path) -> dict:
    """What the report says about the model: backbone, head, weights identity, epoch."""
    exported = for_file(model)
    if exported is not None:
        return {"model file": f"{model} ({exported.what})"}
    ckpt = read_checkpoint(model)
    ident = ckpt["backbone_identity"]
    weights = ident["weights"]
    if weights == "random":
        weights = f"RANDOM (seed {ident['seed']}): a smoke test, not a real model"
    elif ident.get("sha256"):
        weights += f" (sha256 {ident['sha256'][:16]}...)"
    return {
        "backbone": f"{ident['arch']}" + (" (fine-tuned)" if ckpt["fine_tune"] else " (frozen)"),
        "weights": weights,
        "head": ckpt["head_name"],
        "trained at": "x".join(map(str, ckpt["imgsz"])) + f", epoch {ckpt.get('epoch', '?')}",
        "classes": ", ".join(ckpt["class_names"]),
    }


def format_report(report: dict) -> str:
    """The report as a short table."""
    lines = [
        f"{report['split']}: {report['images']} images at full resolution (model input {report['imgsz']})",
        f"{'class':<16}{'IoU':>8}",
    ]
    lines += [
        f"{name:<16}{iou:>8.4f}" if iou == iou else f"{name:<16}{'absent':>8} (not in these masks or predictions)"
        for name, iou in report["iou"].items()
    ]
    stats = report["per_image_miou"]
    lines += [
        f"{'mIoU':<16}{report['miou']:>8.4f}  [{report['miou_ci'][0]:.4f}, {report['miou_ci'][1]:.4f}] (95% interval, "
        f"bootstrap over the {report['images']} images)",
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
