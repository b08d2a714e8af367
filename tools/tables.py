"""The tables of measured figures in README.md and docs/, made from the JSON files under benchmarks/measured/.

A table sits between ``<!-- measured-table: benchmarks/measured/FILE.json -->`` and ``<!-- end measured-table -->``
(the path from the repository root). ``python tools/tables.py`` writes every such table from its file;
``--check`` only says which differ and exits 1 if any does (tests/test_docs.py runs it). Hand-copied figures go
stale; these cannot.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = re.compile(r"(<!-- measured-table: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end measured-table -->)", re.S)


def _table(head: list[str], rows: list[list[str]], note: str) -> str:
    """A markdown table of `rows` under `head`, then a blank line and `note` (what was measured, where, when)."""
    return "\n".join([_row(head), "|" + "---|" * len(head), *map(_row, rows), "", note])


def _row(cells: list[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def sweep_table(res: dict) -> str:
    """`benchmarks/sweep.py`'s figures: each separate run, the sweep, the ratios, and the sweep's leaderboard."""
    lines = ["| run | wall s | its extraction s | the rest s | epochs equal the sweep's |", "|---|---|---|---|---|"]
    for head, wall in res["separate_runs_s"].items():
        equal = "yes" if res["metrics_equal_standalone"][head] and res["valid_scores_equal_standalone"][head] else "no"
        lines.append(
            f"| `train --head {head}` | {wall:.1f} | {res['extraction_s'][head]:.1f} | "
            f"{res['training_s'][head]:.1f} | {equal} |"
        )
    lines += [
        f"| the {len(res['separate_runs_s'])} separate runs | {res['separate_total_s']:.1f} | | | |",
        f"| **`sweep`** | **{res['sweep_s']:.1f}** | | | |",
        "",
        f"The sweep took {res['sweep_over_one_extraction_plus_training']:.3f}x one extraction plus the candidates' "
        f"training ({res['one_extraction_plus_training_s']:.1f} s; the goal is at most 1.10) and "
        f"{res['sweep_over_separate_runs']:.2f}x the separate runs. {res['setup']}; {res['machine']}.",
        "",
        "```",
        *res["leaderboard"],
        "```",
    ]
    return "\n".join(lines)


def leaderboard_table(board: dict) -> str:
    """A sweep's leaderboard.json: one row per candidate (and the baseline), each class's IoU where there are more
    than two classes, then the verdict."""
    classes = board["class_names"] if len(board["class_names"]) > 2 else []
    head = [
        "candidate",
        "valid mIoU",
        "95% interval",
        "behind the leader",
        *classes,
        "params",
        "head ms/img",
        "train s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in board["rows"]:
        if row["status"] == "failed":
            lines.append(f"| {row['name']} | failed: {row['message']} |" + " |" * (len(head) - 2))
            continue
        low, high = row["miou_ci"]
        behind = (
            "leader"
            if row.get("leader")
            else "{:.3f} [{:.3f}, {:.3f}]".format(row["behind_leader"], *row["behind_leader_ci"])
        )
        ious = ["-" if row["iou"][c] is None else f"{row['iou'][c]:.3f}" for c in classes]
        cost = [f"{row['params']:,}", f"{row['head_ms']:.2f}", f"{row['train_s']:.1f}"] if "params" in row else [""] * 3
        cells = [row["name"], f"{row['miou']:.4f}", f"[{low:.4f}, {high:.4f}]", behind, *ious, *cost]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", board["verdict"] + "."])


def video_pace_table(res: dict) -> str:
    """`benchmarks/video_pace.py`'s figures: each pipeline's FPS, its ratio to the bare codecs and its CPU time a
    frame, at each foreground share the model was set to."""
    shares = list(res["runs"])
    head = ["pipeline"] + [f"{c}, {float(s):.0%} person" for s in shares for c in ("FPS", "x bare", "CPU ms a frame")]
    rows = []
    for i, first in enumerate(res["runs"][shares[0]]):
        cells = [first["pipeline"]]
        for share in shares:
            row = res["runs"][share][i]
            ratio = "" if row["x_bare"] is None else f"{row['x_bare']:.2f}"
            cpu = f"{row['cpu_ms']:.1f}" if "cpu_ms" in row else ""
            cells += [f"{row['fps']:.1f}", ratio, cpu]
        rows.append(cells)
    env = ", ".join(f"{k}={v}" for k, v in res["environment"].items() if v) or "no OpenMP variables set"
    codec = f"{res['codec_threads']} codec thread" + ("" if res["codec_threads"] == 1 else "s")
    note = (
        f"{res['clip']}, {res['frames']} frames; {res['model']}; {res['torch_threads']} torch threads, {codec}, "
        f"{env}; {res['machine']}; one run each, {res['date']}."
    )
    return _table(head, rows, note)


def oracle_table(res: dict) -> str:
    """`benchmarks/upsampling_oracle.py --final`'s figures: each upsampling of the true token grid, scored over all
    pixels and over the boundary band."""
    rows = []
    for row in res["rows"]:
        bold = "**" if row["name"] == "guided" else ""
        rows.append([row["label"], f"{bold}{row['miou']:.4f}{bold}", f"{bold}{row['band_miou']:.4f}{bold}"])
    h, w = res["imgsz"]
    note = (
        f"{res['images']} images of the {res['split']}, at full resolution; input {h}x{w}, token grid "
        f"{res['grid'][0]}x{res['grid'][1]}; band: within {res['band_px']} px of a boundary; trained on "
        f"{res['train_images']} training images ({res['design_images']} more held out to choose the design), "
        f"{res['epochs']} epochs, seed {res['seed']}, {res['train_s']:.0f} s of training; {res['machine']}; "
        f"{res['date']}."
    )
    return _table(["upsampling of the true token grid", "valid mIoU", "boundary-band mIoU"], rows, note)


def cpu_precision_table(res: dict) -> str:
    """`benchmarks/cpu_precision.py`'s figures: every engine and precision at each size and batch, the fastest of
    each group in bold."""
    threads = len({r["threads"] for r in res["rows"]}) > 1
    head = ["threads"] * threads + ["size", "batch", "engine", "precision", "images/s, median [min - max]"]
    head += ["speed-up", "lowest token cosine"]
    rows, fastest = [], {}
    for row in res["rows"]:
        group = (row["threads"], row["size"], row["batch"])
        fastest[group] = max(fastest.get(group, 0.0), row["median"])
    for row in res["rows"]:
        bold = "**" if row["median"] == fastest[(row["threads"], row["size"], row["batch"])] else ""
        speed = f"{row['median']:.3g} [{row['min']:.3g} - {row['max']:.3g}]"
        ratio = "unreliable" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        cells = [str(row["threads"])] * threads + [str(row["size"]), str(row["batch"]), row["engine"], row["precision"]]
        cells += [f"{bold}{speed}{bold}", f"{bold}{ratio}{bold}", f"{row['min_cosine']:.4g}"]
        rows.append(cells)
    versions = ", ".join(f"{k} {v}" for k, v in res["versions"].items() if v)
    note = (
        f"{res['arch']} backbone, random weights with LayerScale set to 1; {versions}; images/s, median [min - max] "
        f"of {res['repeats']} after a warm-up, speed-up against torch fp32 at the same size and batch; "
        f"{res['machine']}; {res['date']}."
    )
    return _table(head, rows, note)


def cpu_predict_table(res: dict) -> str:
    """`benchmarks/cpu_predict.py`'s figures: `predict` end to end per precision and engine, the fastest in bold,
    speed-ups against float32."""
    rows = []
    done = [r for r in res["rows"] if "failed" not in r]
    fastest = max(r["images_per_s"] for r in done)
    base = next(r["images_per_s"] for r in done if r["precision"] == "fp32")
    for row in res["rows"]:
        if "failed" in row:
            rows.append([row["precision"], row["engine"], f"failed: {row['failed']}", "", "", ""])
            continue
        bold = "**" if row["images_per_s"] == fastest else ""
        ratio = "" if row["precision"] == "fp32" else f" ({row['images_per_s'] / base:.2f}x)"
        same = "100%" if row["same_as_fp32"] == 1 else f"{row['same_as_fp32']:.2%}"
        speed = [f"{bold}{row['seconds']:.1f}{bold}", f"{bold}{row['images_per_s']:.3f}{bold}{ratio}"]
        rows.append([row["precision"], row["engine"], *speed, same, f"{row['valid_miou']:.4f}"])
    h, w = res["imgsz"]
    head = ["precision", "engine", "seconds", "images/s", "pixels as float32", "valid mIoU"]
    return _table(head, rows, f"{res['images']} valid images at {h}x{w}, batch 1; {res['machine']}; {res['date']}.")


def big_photo_table(res: dict) -> str:
    """`benchmarks/big_photo.py`'s figures: each photo segmented whole (shrunk) and with --tile, scored against its
    true mask over all pixels and over the boundary band, then how far the two masks differ."""
    h, w = res["model_input"]
    rows, differ = [], []
    for photo in res["photos"]:
        pw, ph = photo["size"]
        name = f"{pw}x{ph} ({pw * ph / 1e6:.0f} MP)"
        for way in photo["ways"]:
            how = f"whole, shrunk to {w}x{h}" if way["way"] == "whole" else f"`--tile` ({photo['windows']} windows)"
            figures = [f"{way['seconds']:.2f}", f"{way['peak_rss_mb']:.0f} MB", f"{way['miou']:.3f}"]
            rows.append([name, how, *figures, f"{way['band_miou']:.3f}"])
        differ.append(f"{photo['differ']:.1%} of the pixels ({photo['differ_band']:.1%} of the band) at {name}")
    m = res["model"]
    note = (
        f"The two masks differ on {'; '.join(differ)}. The model: {m['arch']}, {m['weights']} weights, "
        f"{m['head']} head, {m['epochs']} epochs at {w}x{h} (seed {m['seed']}, {m['cache_views']} views), best "
        f"valid mIoU {m['valid_miou']:.3f} at epoch {m['best_epoch']}. Rows of photos {res['row_px']} px high; "
        f"band: within {res['band_px']} px of a true person boundary; {res['machine']}; {res['date']}."
    )
    return _table(["photo", "way", "seconds", "peak RSS", "mIoU", "boundary-band mIoU"], rows, note)


def disk_space_table(res: dict) -> str:
    """`benchmarks/disk_space.py`'s figures: a new `.venv` after each install step, per build of torch."""
    builds = res["builds"]
    head = ["`.venv` holding"] + [f"{label} (torch {b['torch']})" for label, b in builds.items()]
    openvino = max(b["openvino_bytes"] for b in builds.values()) / 1e9
    rows = {
        "torch": "torch",
        "webdino-seg": "+ webdino-seg and its dependencies (`make quickstart`)",
        "test extras": f"+ the test extras (`make test`; OpenVINO is {openvino:.2f} GB of them)",
    }
    cells = [[label] + [f"{b['bytes'][step] / 1e9:.1f} GB" for b in builds.values()] for step, label in rows.items()]
    return _table(head, cells, f"Each in a new `.venv` on {res['platform']} (Python {res['python']}), {res['date']}.")


# the benchmark scripts' files (benchmarks/measured_json.py) by their format; older files are told by their keys
RENDERERS = {
    "webdino-seg/video-pace": video_pace_table,
    "webdino-seg/upsampling-oracle": oracle_table,
    "webdino-seg/cpu-precision": cpu_precision_table,
    "webdino-seg/cpu-predict": cpu_predict_table,
    "webdino-seg/big-photo": big_photo_table,
    "webdino-seg/disk-space": disk_space_table,
}


def render(path: Path) -> str:
    """The table for the measured file `path`, by what it holds."""
    res = json.loads(path.read_text())
    table = RENDERERS.get(res.get("format", ""))
    if table is not None:
        return table(res)
    if "sweep_s" in res:
        return sweep_table(res)
    if "verdict" in res and "rows" in res:
        return leaderboard_table(res)
    if res.get("format") == "webdino-seg/benchmark":
        from webdino_seg.app.benchmark import markdown_table

        return markdown_table(res)
    raise ValueError(f"{path}: no table is made from this file")


def update(text: str) -> tuple[str, list[str]]:
    """`text` with every measured table made again, and the paths of those that differed."""
    changed = []

    def remake(match: re.Match) -> str:
        body = render(REPO / match["path"]) + "\n"
        if body != match["body"]:
            changed.append(match["path"])
        return match[1] + body + match[4]

    return TABLE.sub(remake, text), changed


def documents() -> list[Path]:
    """README.md and every page under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from its file")
    args = parser.parse_args(argv)
    stale = []
    for doc in documents():
        text = doc.read_text()
        new, changed = update(text)
        stale += [f"{doc.relative_to(REPO)}: the table from {path}" for path in changed]
        if changed and not args.check:
            doc.write_text(new)
    for line in stale:
        print(("differs: " if args.check else "made again: ") + line)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
