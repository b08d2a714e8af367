"""The evaluation report: a self-contained HTML page with the scores, the confusion matrix, the training
curves and a gallery of every image, worst first. Opens from disk; nothing is fetched from a network."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..utils.files import atomic_write, check_output_dir, publish
from ..utils.overlay import overlay, palette
from ..utils.safetext import escape, url

THUMB_WIDTH = 300
CURVES = ("miou.png", "loss.png", "accuracy.png")


def _interval(report: dict) -> str:
    """The mIoU's bootstrap interval as the page shows it (nothing for a report without one)."""
    if "miou_ci" not in report:
        return ""
    low, high = report["miou_ci"]
    return f" [{low:.4f}, {high:.4f}] <small>(95% interval, bootstrap over the {report['images']} images)</small>"


class ReportWriter:
    """Collects each evaluated image's overlays, then writes ``index.html``: everything is written into a temp
    folder beside `folder` and renamed into place by `write`; `discard` (or an error) leaves nothing behind."""

    def __init__(self, folder: str | Path, colors: np.ndarray | None = None) -> None:
        """`colors`: one RGB row per class for the overlays and the legend (default: the fixed palette)."""
        self.folder = check_output_dir(folder, "--report")
        self.colors = colors
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(dir=self.folder.parent, prefix=f".{self.folder.name}.", suffix=".tmp"))
        (self.staging / "images").mkdir()
        self.items: list[dict] = []

    def _jpeg(self, array: np.ndarray, name: str, width: int | None = None) -> str:
        img = Image.fromarray(array)
        if width and img.width > width:
            img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
        self._write(f"images/{name}", lambda f: img.save(f, format="JPEG", quality=88))
        return f"images/{name}"

    def _write(self, name: str, write: Callable[[BinaryIO], object]) -> None:
        """Write the report's file `name` into the staging folder; a failure names the report, not the temp."""
        try:
            atomic_write(self.staging / name, write)
        except OSError as err:
            reason = (err.__cause__.strerror if isinstance(err.__cause__, OSError) else None) or err.strerror
            raise OSError(
                err.errno,
                f"cannot write the report {self.folder} ({name}): {reason or err}; the report "
                "there before, if any, is intact",
            ) from err

    def add(self, name: str, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, scores: dict) -> None:
        """One image: ground truth and prediction overlays (thumbnail and full size) and its scores."""
        stem = f"{len(self.items):05d}_{Path(name).stem}"  # numbered: a.jpg and a.png keep their own files
        gt, pr = overlay(image, truth, colors=self.colors), overlay(image, pred, colors=self.colors)
        self.items.append(
            {
                "name": name,
                **scores,
                "gt_thumb": self._jpeg(gt, f"{stem}_gt_thumb.jpg", THUMB_WIDTH),
                "pred_thumb": self._jpeg(pr, f"{stem}_pred_thumb.jpg", THUMB_WIDTH),
                "gt_full": self._jpeg(gt, f"{stem}_gt.jpg"),
                "pred_full": self._jpeg(pr, f"{stem}_pred.jpg"),
            }
        )

    def discard(self) -> None:
        """Remove what was written so far (the report folder itself is left as it was)."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def _confusion(self, matrix: np.ndarray, names: list[str]) -> str:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry is touched

        rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        n = len(names)
        many = n > 6  # then shares only, smaller, so the matrix still fits a page
        size = (0.75 * n + 3, 0.65 * n + 2.5) if many else (1.6 * n + 2.4, 1.4 * n + 1.6)
        fig = Figure(figsize=size)
        ax = fig.subplots()
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                colour = "white" if rows[i, j] > 0.5 else "black"
                text = f"{rows[i, j]:.2f}" if many else f"{rows[i, j]:.3f}\n({matrix[i, j]:,} px)"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7 if many else 9)
        ax.set_xticks(range(n), names, rotation=45 if many else 0, ha="right" if many else "center")
        ax.set_yticks(range(n), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("confusion matrix (share of each true class)")
        fig.tight_layout()
        self._write("confusion.png", lambda f: fig.savefig(f, format="png", dpi=100))
        return "confusion.png"

    def write(self, report: dict, matrix: np.ndarray, model_info: dict, curves_from: Path | None) -> Path:
        """``index.html`` (and the confusion matrix, and the curves in `curves_from`, the folder of the run that
        wrote the model), then the whole report renamed into place; returns the page's path."""
        try:
            names = list(report["iou"])
            confusion = self._confusion(matrix, names)
            curves = []
            for name in CURVES:
                if curves_from is not None and (curves_from / name).is_file():
                    data = (curves_from / name).read_bytes()
                    self._write(name, lambda f, data=data: f.write(data))
                    curves.append(name)
            colors = self.colors if self.colors is not None else palette(len(names))
            page = _page(report, self.items, confusion, curves, model_info, _legend(names, colors))
            self._write("report.json", lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
            self._write("index.html", lambda f: f.write(page.encode()))
            self._publish()
        except BaseException:
            self.discard()
            raise
        return self.folder / "index.html"

    def _publish(self) -> None:
        """Rename the finished report over `folder` (an earlier report there is moved aside, then removed)."""
        old = None
        if self.folder.exists():
            old = Path(tempfile.mkdtemp(dir=self.folder.parent, prefix=f".{self.folder.name}.old.", suffix=".tmp"))
            os.replace(self.folder, old / "report")
        try:
            publish(self.staging, self.folder, directory=True)
        except OSError as err:
            if old is not None:
                os.replace(old / "report", self.folder)
            raise OSError(err.errno, f"cannot write {self.folder}: {err.strerror or err}") from err
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


def _row(label: str, value: str) -> str:
    return f"<tr><th>{escape(label)}</th><td>{value}</td></tr>"


def _summary(report: dict, info: dict) -> str:
    """The summary table's rows: scores, the baseline, what was scored and the model's identity."""
    e = escape
    base = report["baseline"]
    rows = [
        _row("mIoU", f"<b>{report['miou']:.4f}</b>" + _interval(report)),
        *[_row(f"IoU {name}", f"{iou:.4f}") for name, iou in report["iou"].items()],
        _row("pixel accuracy", f"{report['pixel_accuracy']:.4f}"),
        _row(
            f"all-{base['class']} baseline",
            f"mIoU {base['miou']:.4f}, pixel accuracy {base['pixel_accuracy']:.4f} "
            f"(predicting {e(base['class'])} everywhere)",
        ),
        _row("images", f"{report['images']} ({_scope(report)}, full resolution)"),
        _row(
            "model input", "x".join(map(str, report["imgsz"])) + (f"; {e(report['tta'])}" if report.get("tta") else "")
        ),
        *[_row(key, e(str(value))) for key, value in info.items()],
    ]
    return "".join(rows)


def _scope(report: dict) -> str:
    """Which images were scored, in words."""
    e = escape
    if report["split"] == "all":
        return f"every image of {e(report['data'])}"
    return f"{e(report['split'])} split of {e(report['data'])}"


def _cards(items: list[dict]) -> str:
    """One figure per image, worst mIoU first: both overlays as thumbnails linking to full size."""
    e = escape
    ordered = sorted(items, key=lambda item: (np.nan_to_num(item["miou"], nan=2.0), item["name"]))
    return "\n".join(
        f'<figure class="card" data-name="{e(item["name"].lower())}" data-miou="{item["miou"]:.6f}">'
        f"<figcaption><b>{e(item['name'])}</b> mIoU {item['miou']:.3f}"
        + "".join(f" · {e(k.removeprefix('iou_'))} {v:.3f}" for k, v in item.items() if k.startswith("iou_"))
        + "</figcaption>"
        f'<div class="pair"><a href="{url(item["gt_full"])}"><img src="{url(item["gt_thumb"])}" alt="ground truth">'
        f'</a><a href="{url(item["pred_full"])}"><img src="{url(item["pred_thumb"])}" alt="prediction"></a></div>'
        '<div class="legend"><span>ground truth</span><span>prediction</span></div></figure>'
        for item in ordered
    )


STYLE = (
    f":root {{ --thumb: {THUMB_WIDTH}px; }}\n"
    + """\
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; } th, td { text-align: left; padding: 3px 12px; border-bottom: 1px solid #ddd; }
.top { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
.curve { width: 420px; margin: 4px; }
#confusion { max-width: 100%; }
#gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.card { margin: 0; border: 1px solid #ccc; border-radius: 6px; padding: 6px; width: calc(2 * var(--thumb) + 6px); }
.pair { display: flex; gap: 6px; } .pair img { width: var(--thumb); }
.legend { display: flex; gap: 6px; font-size: 0.85em; color: #555; } .legend span { width: var(--thumb); }
figcaption { font-size: 0.9em; margin-bottom: 4px; }
#filter { font-size: 1em; padding: 4px; width: 22em; }
.swatch { margin-right: 1em; white-space: nowrap; }
.swatch i { display: inline-block; width: 1em; height: 1em; margin-right: 0.3em; vertical-align: middle;
  border: 1px solid #333; }
"""
)

# the gallery's filter box: a part of a name, or <x / >x for the images under / over an mIoU of x
SCRIPT = """const cards = Array.from(document.querySelectorAll('.card'));
const count = document.getElementById('count');
function apply() {
  const q = document.getElementById('filter').value.trim().toLowerCase();
  let shown = 0;
  for (const card of cards) {
    let ok = true;
    if (q.startsWith('<')) ok = parseFloat(card.dataset.miou) < parseFloat(q.slice(1));
    else if (q.startsWith('>')) ok = parseFloat(card.dataset.miou) > parseFloat(q.slice(1));
    else if (q) ok = card.dataset.name.includes(q);
    card.style.display = ok ? '' : 'none';
    shown += ok;
  }
  count.textContent = shown + ' of ' + cards.length + ' images';
}
document.getElementById('filter').addEventListener('input', apply);
apply();
"""


def _legend(names: list[str], colors: np.ndarray) -> str:
    """Each class's overlay colour and name (void is grey)."""
    swatch = '<span class="swatch"><i style="background: rgb({}, {}, {})"></i>{}</span>'
    label = [escape(name) + ("" if colors[i].any() else " (not drawn)") for i, name in enumerate(names)]
    spans = [swatch.format(*(int(v) for v in colors[i]), label[i]) for i in range(len(names))]
    return "".join(spans) + swatch.format(128, 128, 128, "ignored (void)")


def _page(report: dict, items: list[dict], confusion: str, curves: list[str], info: dict, legend: str = "") -> str:
    e = escape
    curve_html = (
        "".join(f'<img class="curve" src="{url(c)}" alt="{escape(c)}">' for c in curves)
        or "<p>no curves: the model's folder is not the run that wrote it</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>webdino-seg report: {e(report["model"])}</title>
<link rel="icon" href="data:,"><meta name="viewport" content="width=device-width, initial-scale=1">
<style>
{STYLE}</style></head><body>
<h1>Evaluation of {e(report["model"])}</h1>
<div class="top"><table id="summary">{_summary(report, info)}</table>
<img id="confusion" src="{url(confusion)}" alt="confusion matrix"></div>
<h2>Training curves</h2><div id="curves">{curve_html}</div>
<h2>Every image, worst first</h2>
<p id="legend">{legend}</p>
<p><input id="filter" placeholder="filter: part of a name, or &lt;0.5 for mIoU below 0.5">
<span id="count"></span></p>
<div id="gallery">
{_cards(items)}
</div>
<script>
{SCRIPT}</script>
</body></html>
"""
