"""A sweep against the separate `train` runs it replaces, measured in one run: every time, and whether each
candidate's scores equal its standalone run's.

The sweep pays the feature extraction once; the separate runs pay it once each. The figure of merit is the sweep's
wall time over one extraction plus the candidates' training times (each standalone run's wall time without its
cache stage): 1.00 means the sweep costs nothing beyond one extraction, and the goal is at most 1.10.

    python benchmarks/sweep.py --data data/pennfudan --arch dinov2-vits14 --imgsz 448 448 --epochs 10 \
        --out benchmarks/measured/sweep-cpu.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from webdino_seg import TrainConfig, train
from webdino_seg.engine import leaderboard
from webdino_seg.engine.sweep import sweep
from webdino_seg.models.heads import HEADS


def _rows(run: Path) -> list[dict]:
    """metrics.csv without the wall-clock column."""
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _largest_difference(a: list[dict], b: list[dict]) -> float:
    """The largest relative difference between two runs' metrics (inf when their epochs or columns differ)."""
    if len(a) != len(b) or any(x.keys() != y.keys() for x, y in zip(a, b, strict=True)):
        return float("inf")
    return max(
        abs(float(x[k]) - float(y[k])) / max(abs(float(x[k])), 1e-12) for x, y in zip(a, b, strict=True) for k in x
    )


def _timed_train(cfg: TrainConfig) -> tuple[Path, float, dict]:
    start = time.perf_counter()
    run = train(cfg, log=lambda _: None)
    return run, time.perf_counter() - start, json.loads((run / "timings.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--arch", default="dinov2-vits14")
    parser.add_argument("--imgsz", nargs=2, type=int, default=[448, 448])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--heads", nargs="+", default=list(HEADS))
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = TrainConfig(
            data=args.data,
            arch=args.arch,
            weights="random",
            imgsz=tuple(args.imgsz),
            epochs=args.epochs,
            workers=args.workers,
            out=str(Path(tmp) / "sweep"),
        )
        alone = {}
        for head in args.heads:
            run, seconds, timings = _timed_train(dataclasses.replace(base, head=head, out=str(Path(tmp) / head)))
            cache = timings["stages"]["cache"]["seconds"]
            alone[head] = {"run": run, "wall_s": seconds, "cache_s": cache, "training_s": seconds - cache}
            print(f"train --head {head}: {seconds:.1f} s (extraction {cache:.1f} s, the rest {seconds - cache:.1f} s)")
        start = time.perf_counter()
        folder = sweep(base, {"head": args.heads}, log=lambda _: None)
        swept = time.perf_counter() - start
        equal = {h: _rows(folder / h) == _rows(alone[h]["run"]) for h in args.heads}
        # the first run in a process can differ from later ones in the last float bits (2-thread CPU kernels)
        rounding = {h: _largest_difference(_rows(folder / h), _rows(alone[h]["run"])) for h in args.heads}
        same_scores = {
            h: json.loads((folder / h / "valid_scores.json").read_text())["confusion"]
            == json.loads((alone[h]["run"] / "valid_scores.json").read_text())["confusion"]
            for h in args.heads
        }
        ranked = json.loads((folder / "leaderboard.json").read_text())
        verdict, board = ranked["verdict"], "\n".join(leaderboard.table_lines(ranked))
    extraction = sum(a["cache_s"] for a in alone.values()) / len(alone)
    training = sum(a["training_s"] for a in alone.values())
    separate = sum(a["wall_s"] for a in alone.values())
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, no GPU"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "setup": f"{args.arch} (random) at {args.imgsz[0]}x{args.imgsz[1]}, {args.epochs} epochs, heads "
        f"{', '.join(args.heads)}, data {args.data}",
        "separate_runs_s": {h: round(a["wall_s"], 1) for h, a in alone.items()},
        "extraction_s": {h: round(a["cache_s"], 1) for h, a in alone.items()},
        "training_s": {h: round(a["training_s"], 1) for h, a in alone.items()},
        "separate_total_s": round(separate, 1),
        "sweep_s": round(swept, 1),
        "one_extraction_plus_training_s": round(extraction + training, 1),
        "sweep_over_one_extraction_plus_training": round(swept / (extraction + training), 3),
        "sweep_over_separate_runs": round(swept / separate, 3),
        "metrics_equal_standalone": equal,
        "metrics_largest_relative_difference": rounding,
        "valid_scores_equal_standalone": same_scores,
        "verdict": verdict,
    }
    print(f"four separate runs: {separate:.1f} s; sweep: {swept:.1f} s ({swept / separate:.2f}x)")
    print(
        f"one extraction ({extraction:.1f} s, the mean of the runs') + training ({training:.1f} s) = "
        f"{extraction + training:.1f} s; the sweep takes {swept / (extraction + training):.3f}x that (goal: <= 1.10)"
    )
    print(f"each candidate's epochs equal its standalone run: {equal}; full-size valid scores equal: {same_scores}")
    print(f"largest relative difference of each candidate's metrics from its standalone run: {rounding}")
    print(board)
    if args.out:
        args.out.write_text(json.dumps(figures | {"leaderboard": board.splitlines()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
