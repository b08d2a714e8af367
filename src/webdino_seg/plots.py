"""Training curves: loss.png, accuracy.png and miou.png, train against valid."""

from __future__ import annotations

from pathlib import Path

from .io import atomic_write

CURVES = {"loss.png": ("loss", "Loss"), "accuracy.png": ("pixel_acc", "Pixel accuracy"), "miou.png": ("miou", "mIoU")}


def save_curves(history: list[dict], run: str | Path) -> list[Path]:
    """Plot each metric per epoch for train and valid into the run folder; return the files written."""
    if not history:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    written = []
    for filename, (key, title) in CURVES.items():
        fig, ax = plt.subplots(figsize=(8, 5))
        ax.plot(epochs, [row[f"train_{key}"] for row in history], color="tab:blue", label=f"train {title}")
        ax.plot(epochs, [row[f"valid_{key}"] for row in history], color="tab:red", label=f"valid {title}")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(atomic_write(Path(run) / filename, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100)))
        plt.close(fig)
    return written
