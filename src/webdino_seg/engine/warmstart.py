"""Warm start: a new run that begins from a trained model's head (and its backbone, if it was fine-tuned)."""

from __future__ import annotations

from pathlib import Path

from ..data.errors import DataError
from ..models.checkpoint import read_checkpoint
from ..models.segmentation import SegmentationModel
from .config import TrainConfig


def _same_backbone(a: dict, b: dict) -> bool:
    """Same variant and the same weights: by the file's sha256, or for random backbones by their fingerprint."""
    if a["arch"] != b["arch"]:
        return False
    if "sha256" in a or "sha256" in b:
        return a.get("sha256") == b.get("sha256")
    fa, fb = a.get("fingerprint", 0.0), b.get("fingerprint", 0.0)
    return abs(fa - fb) <= 1e-6 * max(1.0, abs(fa))


def check_unseen(path: Path, ckpt: dict, valid: dict[str, str]) -> None:
    """Refuse a valid split (image name -> sha256) holding images the checkpoint's model was trained on (its
    recorded `train_images`, compared by content), naming them: their scores would say nothing."""
    seen = set((ckpt.get("train_images") or {}).values())
    leaked = sorted(name for name, digest in valid.items() if digest in seen)
    if leaked:
        shown = ", ".join(leaked[:5]) + (", ..." if len(leaked) > 5 else "")
        raise DataError(
            f"--init-from {path}: {len(leaked)} of this run's {len(valid)} valid images were in the training set "
            f"of that model ({shown}); scored on what it learned from, they would flatter it. Keep them in "
            "train (the same --seed and --valid-fraction on a grown flat folder do), or start without --init-from"
        )


def warm_start(model: SegmentationModel, identity: dict, cfg: TrainConfig, valid: dict[str, str] | None = None) -> str:
    """Load `cfg.init_from`'s head (and fine-tuned backbone) into `model`, after checking it was trained on the
    same backbone, classes and head, and on none of the `valid` images (name -> sha256); return the line that
    says so."""
    path = Path(cfg.init_from)
    ckpt = read_checkpoint(path)
    check_unseen(path, ckpt, valid or {})
    theirs = ckpt["backbone_identity"]
    if not _same_backbone(theirs, identity):
        raise ValueError(
            f"--init-from {path}: trained on another backbone ({theirs['arch']}, weights "
            f"{theirs['weights']}); this run has {identity['arch']}, weights {identity['weights']}"
        )
    if list(ckpt["class_names"]) != list(cfg.class_names):
        raise ValueError(f"--init-from {path}: its classes {ckpt['class_names']} are not this run's {cfg.class_names}")
    if ckpt["head_name"] != cfg.head:
        raise ValueError(f"--init-from {path}: its head is {ckpt['head_name']}, this run's --head is {cfg.head}")
    if ckpt["backbone"] is not None and not cfg.fine_tune:
        raise ValueError(f"--init-from {path}: its backbone was fine-tuned; add --fine-tune to go on training it")
    model.head.load_state_dict(ckpt["head"], strict=True)
    if ckpt["backbone"] is not None:
        model.backbone.load_state_dict(ckpt["backbone"], strict=True)
    what = "head and fine-tuned backbone" if ckpt["backbone"] is not None else "head"
    return f"starting from the {what} of {path} (epoch {ckpt.get('epoch', '?')})"
