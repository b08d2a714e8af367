"""A sweep's leaderboard: every candidate's valid scores with paired bootstrap intervals, the all-background
baseline as a row, and a verdict in words on whether the leader is ahead beyond noise; written as CSV, JSON, a
plot and an HTML page."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from ..utils.files import atomic_write, atomic_write_text
from ..utils.metrics import CI_LEVEL, RESAMPLES, ConfusionMatrix, bootstrap_scores, interval
from ..utils.safetext import escape, url

COLUMNS = (
    "#",
    "candidate",
    "valid mIoU",
    "95% interval",
    "behind leader",
    "pixel acc",
    "params",
    "head ms/img",
    "train s",
)
FILES = ("leaderboard.csv", "leaderboard.json", "leaderboard.png", "leaderboard.html")


def _stack(entries: list[dict]) -> tuple[list[str], torch.Tensor]:
    """The valid image names and the (K, N, C, C) per-image confusion matrices of the scored `entries`, every one
    on the same images (else a ValueError naming the candidate)."""
    names = list(entries[0]["scores"]["confusion"])
    mats = []
    for entry in entries:
        confusion = entry["scores"]["confusion"]
        if sorted(confusion) != sorted(names):
            raise ValueError(f"candidate {entry['name']} was scored on other valid images than {entries[0]['name']}")
        mats.append(torch.tensor([confusion[n] for n in names], dtype=torch.int64))
    return names, torch.stack(mats)


def baseline_matrices(mats: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(N, C, C) per-image matrices of predicting the most frequent true class everywhere, from any candidate's
    (N, C, C) matrices (rows are the truth, whatever was predicted), and that class."""
    truth = mats.sum(-1)  # (N, C) true pixels per class
    top = int(truth.sum(0).argmax())
    out = torch.zeros_like(mats)
    out[:, :, top] = truth
    return out, top


def baseline_name(class_names: list[str], top: int) -> str:
    """The baseline row's name: ``all-background baseline`` (or all-Road, for the class it predicts)."""
    return f"all-{class_names[top]} baseline"


def rank(entries: list[dict], class_names: list[str], *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """The leaderboard of `entries` (each: name, settings, status, and when done its valid_scores.json as
    ``scores``, ``params``, ``head_ms``, ``train_s``): rows sorted by valid mIoU, the baseline among them, each
    with its interval and its difference to the leader (paired: the same image draws for every row), failed
    candidates last; and the verdict."""
    done = [e for e in entries if e.get("status") == "done"]
    rows: list[dict] = []
    verdict = "no candidate finished: nothing to compare"
    images = 0
    if done:
        names, mats = _stack(done)
        images = len(names)
        base, top = baseline_matrices(mats[0])
        mats = torch.cat([mats, base[None]])
        draws = bootstrap_scores(mats, resamples, seed)
        labels = [e["name"] for e in done] + [baseline_name(class_names, top)]
        rows = [
            _row(label, mat.sum(0), draw, class_names) for label, mat, draw in zip(labels, mats, draws, strict=True)
        ]
        rows[-1]["status"] = "baseline"
        for row, entry in zip(rows, done, strict=False):
            row.update(
                settings=entry["settings"], params=entry["params"], head_ms=entry["head_ms"], train_s=entry["train_s"]
            )
        order = sorted(range(len(rows)), key=lambda i: -rows[i]["miou"])
        lead = next(i for i in order if i < len(done))  # the best candidate (the baseline is the last row made)
        for i in order:
            rows[i]["behind_leader"] = rows[lead]["miou"] - rows[i]["miou"]
            rows[i]["behind_leader_ci"] = list(interval(draws[lead] - draws[i])) if i != lead else [0.0, 0.0]
        rows[lead]["leader"] = True
        verdict = _verdict(rows[lead], [rows[i] for i in order if i != lead], images)
        rows = [rows[i] for i in order]
    failed = [
        {"name": e["name"], "settings": e["settings"], "status": "failed", "message": e.get("message")}
        for e in entries
        if e.get("status") == "failed"
    ]
    return {
        "rows": rows + failed,
        "verdict": verdict,
        "images": images,
        "ci": {"level": CI_LEVEL, "resamples": resamples, "seed": seed, "paired": True},
        "class_names": class_names,
    }


def _row(name: str, mat: torch.Tensor, draws: torch.Tensor, class_names: list[str]) -> dict:
    """One scored row: mIoU, its interval from `draws`, pixel accuracy and per-class IoU of the summed `mat`."""
    cm = ConfusionMatrix(len(class_names))
    cm.mat = mat
    ious = cm.iou().tolist()
    return {
        "name": name,
        "status": "done",
        "miou": cm.miou(),
        "miou_ci": list(interval(draws)),
        "pixel_acc": cm.pixel_accuracy(),
        "iou": {n: v if v == v else None for n, v in zip(class_names, ious, strict=True)},
    }


def _verdict(lead: dict, others: list[dict], images: int) -> str:
    """Whether the best candidate `lead` is ahead of the next candidate, and of the baseline, beyond noise."""
    source = f"(95% paired bootstrap over the {images} valid images)"
    rivals = [row for row in others if row["status"] == "done"]
    base = next(row for row in others if row["status"] == "baseline")
    name = lead["name"]
    if rivals:
        second = rivals[0]
        gap, (low, high) = second["behind_leader"], second["behind_leader_ci"]
        if low > 0:
            first = f"{name} leads {second['name']} by {gap:.3f} [{low:.3f}, {high:.3f}]: beyond noise"
        else:
            first = (
                f"{name} and {second['name']} are within noise: {name} ahead by {gap:.3f} [{low:.3f}, {high:.3f}], "
                "an interval that holds 0"
            )
    else:
        first = f"{name} is the only candidate that finished"
    gap, (low, high) = base["behind_leader"], base["behind_leader_ci"]
    if low > 0:
        return f"{first}; it beats the {base['name']} by {gap:.3f} [{low:.3f}, {high:.3f}] {source}"
    if gap < 0:
        return f"{first}; but the {base['name']} is ahead of it by {-gap:.3f} [{-high:.3f}, {-low:.3f}] {source}"
    return (
        f"{first}; but it is not ahead of the {base['name']} beyond noise ({gap:.3f} [{low:.3f}, {high:.3f}]) {source}"
    )


def table_lines(board: dict) -> list[str]:
    """The leaderboard as aligned text lines, then the verdict."""
    lines = [
        f"{'candidate':<28} {'valid mIoU':>10} {'95% interval':>17} {'pixel acc':>9} {'params':>9} "
        f"{'head ms/img':>11} {'train s':>8}"
    ]
    for row in board["rows"]:
        if row["status"] == "failed":
            lines.append(f"{row['name']:<28} failed: {row['message']}")
            continue
        low, high = row["miou_ci"]
        extra = (
            f"{row['params']:>9,} {row['head_ms']:>11.2f} {row['train_s']:>8.1f}" if "params" in row else f"{'':>31}"
        )
        lines.append(f"{row['name']:<28} {row['miou']:>10.4f} [{low:.4f}, {high:.4f}] {row['pixel_acc']:>9.4f} {extra}")
    return [*lines, board["verdict"]]


def write(folder: Path, board: dict, *, commands: list[str] = ()) -> list[Path]:
    """leaderboard.csv, .json, .png and .html in the sweep `folder` (each written atomically)."""
    payload = board | {"commands": list(commands)}
    written = [
        atomic_write_text(folder / FILES[0], _csv(board)),
        atomic_write_text(folder / FILES[1], json.dumps(payload, indent=1) + "\n"),
    ]
    if any(row["status"] != "failed" for row in board["rows"]):
        written.append(_plot(folder / FILES[2], board))
    written.append(atomic_write_text(folder / FILES[3], _html(board, commands, folder / FILES[2])))
    return written


def _csv(board: dict) -> str:
    """One CSV row per leaderboard row."""
    classes = board["class_names"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "rank",
            "candidate",
            "status",
            "valid_miou",
            "miou_low",
            "miou_high",
            "behind_leader",
            "behind_low",
            "behind_high",
            "pixel_acc",
            *[f"iou_{c}" for c in classes],
            "params",
            "head_ms",
            "train_s",
            "settings",
            "message",
        ]
    )
    for i, row in enumerate(board["rows"], 1):
        if row["status"] == "failed":
            writer.writerow(
                [i, row["name"], "failed", *[""] * (10 + len(classes)), json.dumps(row["settings"]), row["message"]]
            )
            continue
        writer.writerow(
            [
                i,
                row["name"],
                row["status"],
                row["miou"],
                *row["miou_ci"],
                row["behind_leader"],
                *row["behind_leader_ci"],
                row["pixel_acc"],
                *[row["iou"][c] for c in classes],
                row.get("params", ""),
                row.get("head_ms", ""),
                row.get("train_s", ""),
                json.dumps(row.get("settings", {})),
                "",
            ]
        )
    return out.getvalue()


def _plot(path: Path, board: dict) -> Path:
    """A horizontal bar per scored row: its valid mIoU and interval, the leader on top, the baseline grey."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry is touched

    rows = [row for row in board["rows"] if row["status"] != "failed"][::-1]
    fig = Figure(figsize=(8, 1.2 + 0.5 * len(rows)))
    ax = fig.subplots()
    values = [row["miou"] for row in rows]
    errors = [
        [row["miou"] - row["miou_ci"][0] for row in rows],
        [row["miou_ci"][1] - row["miou"] for row in rows],
    ]
    colors = [
        "tab:grey" if row["status"] == "baseline" else "tab:green" if row.get("leader") else "tab:blue" for row in rows
    ]
    ax.barh(range(len(rows)), values, xerr=errors, color=colors, capsize=4)
    ax.set_yticks(range(len(rows)), [row["name"] for row in rows])
    ax.set_xlabel(f"valid mIoU, 95% bootstrap interval over the {board['images']} images")
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _html(board: dict, commands: list[str], plot: Path) -> str:
    """The leaderboard as a self-contained page (names from outside escaped)."""
    classes = board["class_names"]
    head = "".join(f"<th>{escape(h)}</th>" for h in [*COLUMNS[:6], *[f"IoU {c}" for c in classes], *COLUMNS[6:]])
    body = []
    for i, row in enumerate(board["rows"], 1):
        if row["status"] == "failed":
            body.append(
                f"<tr class='failed'><td>{i}</td><td>{escape(row['name'])}</td>"
                f"<td colspan='{7 + len(classes)}'>failed: {escape(row['message'])}</td></tr>"
            )
            continue
        low, high = row["miou_ci"]
        blow, bhigh = row["behind_leader_ci"]
        behind = "leader" if row.get("leader") else f"{row['behind_leader']:.4f} [{blow:.4f}, {bhigh:.4f}]"
        kind = "leader" if row.get("leader") else row["status"]
        ious = "".join(f"<td>{'-' if row['iou'][c] is None else format(row['iou'][c], '.4f')}</td>" for c in classes)
        extra = (
            f"<td>{row['params']:,}</td><td>{row['head_ms']:.2f}</td><td>{row['train_s']:.1f}</td>"
            if "params" in row
            else "<td></td><td></td><td></td>"
        )
        body.append(
            f"<tr class='{escape(kind)}'><td>{i}</td><td>{escape(row['name'])}</td>"
            f"<td>{row['miou']:.4f}</td><td>[{low:.4f}, {high:.4f}]</td>"
            f"<td>{behind}</td><td>{row['pixel_acc']:.4f}</td>"
            f"{ious}{extra}</tr>"
        )
    picture = f"<img src='{url(plot.name)}' alt='valid mIoU per candidate'>" if plot.exists() else ""
    uses = "".join(f"<pre>{escape(c)}</pre>" for c in commands)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>webdino-seg sweep leaderboard</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:nth-child(2), th:nth-child(2) {{ text-align: left; }} tr.baseline {{ color: #777; }} tr.failed {{ color: #a00; }}
tr.leader {{ font-weight: bold; }} td {{ white-space: nowrap; }} pre {{ background: #f4f4f4; padding: 6px; }}
</style></head><body>
<h1>Which head for this data?</h1>
<p class="verdict">{escape(board["verdict"])}</p>
<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>
<p>Intervals: {board["ci"]["resamples"]} bootstrap draws of the {board["images"]} valid images (seed
{board["ci"]["seed"]}), the same draws for every row, so a difference has its own interval. Scores are the best
epoch's model at each image's full size.</p>
{picture}
<h2>Use the winner</h2>{uses}
</body></html>
"""
