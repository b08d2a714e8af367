"""Training curves: loss.png, accuracy.png and miou.png, train against valid, with the best epoch marked."""

from __future__ import annotations

from pathlib import Path

from .io import atomic_write

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    best = max(history, key=lambda row: row["valid_miou"])
    written = []
    for filename, (key, label) in CURVES.items():
        fig, ax = plt.subplots(figsize=(8, 5))
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
        plt.close(fig)
    return written
