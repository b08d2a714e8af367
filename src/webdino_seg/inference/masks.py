"""What a predicted mask is saved as (`predict --mask-values`) and the per-class probabilities (`--save-probs`)."""

from __future__ import annotations

from pathlib import Path

MASK_VALUES = ("ids", "255", "color")


def check_mask_values(how: str, num_classes: int) -> None:
    """Raise ValueError where `how` is unknown, or is 255 for a model of more than two classes."""
    if how not in MASK_VALUES:
        raise ValueError(f"--mask-values {how!r}: use one of {', '.join(MASK_VALUES)}")
    if how == "255" and num_classes != 2:
        raise ValueError(f"--mask-values 255 is for two classes; this model has {num_classes}: use ids or color")


def encode_mask(mask, how: str, colors):
    """The class-id mask (H, W uint8) as `how` says: ids as they are, 255 (class 1 as 255), or color (H, W, 3 RGB
    in the class colours `colors`, one row per class)."""
    if how == "255":
        return mask * 255
    if how == "color":
        return colors[mask]
    return mask


def save_probs(path: Path, probs, class_names: list[str]) -> Path:
    """Write per-class probabilities (classes, H, W; float in [0, 1]) compactly: a compressed .npz holding `probs`
    as uint8 (probability x 255, rounded: within 0.002), `class_names` and `software` (webdino-seg's mark); read with
    np.load(path)["probs"] / 255."""
    import numpy as np

    from ..utils.files import atomic_write
    from ..utils.outputs import MARK

    quantized = np.clip(np.rint(np.asarray(probs, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    return atomic_write(
        path,
        lambda f: np.savez_compressed(f, probs=quantized, class_names=np.array(class_names), software=np.array(MARK)),
    )
