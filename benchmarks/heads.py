"""Each head trained the same way on Penn-Fudan: parameters, seconds per epoch, valid mIoU.

With the tiny backbone and RANDOM weights on a CPU these are smoke figures (does each head learn,
what does it cost), not a ranking of the heads on a real backbone. `--classes` adds each head's valid
IoU per class at its best epoch, e.g. CamVid's thin classes beside its frequent ones:

    python benchmarks/heads.py --data data/pennfudan [--arch webdino-tiny --imgsz 224 224 --epochs 8]
    python benchmarks/heads.py --data data/camvid --imgsz 224 294 --epochs 6 --class-weights median-freq \
        --classes Pole SignSymbol Fence Pedestrian Bicyclist Road Sky Building Car
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

import torch

from webdino_seg import TrainConfig, train
from webdino_seg.models.heads import HEADS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--arch", default="webdino-tiny")
    parser.add_argument("--imgsz", nargs=2, type=int, default=[224, 224])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--heads", nargs="+", default=list(HEADS))
    parser.add_argument("--class-weights", default="none", help="none, median-freq or w0,w1,... (as train)")
    parser.add_argument("--classes", nargs="*", default=[], help="class names whose valid IoU to show per head")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.heads:
            cfg = TrainConfig(
                data=args.data,
                out=str(Path(tmp) / name),
                arch=args.arch,
                weights="random",
                imgsz=tuple(args.imgsz),
                epochs=args.epochs,
                lr=args.lr,
                head=name,
                cache_views=2,
                class_weights=args.class_weights,
                seed=args.seed,
            )
            run = train(cfg, log=lambda *_: None)
            with open(run / "metrics.csv") as f:
                history = list(csv.DictReader(f))
            final = torch.load(run / "final_model.pth", weights_only=True)
            params = sum(v.numel() for k, v in final["head"].items() if "running_" not in k and "num_batches" not in k)
            baseline = final["baseline"]
            best = max(history, key=lambda r: float(r["valid_miou"]))
            missing = [c for c in args.classes if f"valid_iou_{c}" not in best]
            if missing:
                raise SystemExit(f"{args.data}: no class named {', '.join(missing)} (see its classes.json)")
            rows.append(
                (
                    name,
                    params,
                    statistics.mean(float(r["seconds"]) for r in history),
                    float(best["valid_miou"]),
                    baseline["miou"],
                    [float(best[f"valid_iou_{c}"]) for c in args.classes],
                )
            )
    print(
        f"{args.arch} (random weights) at {args.imgsz[0]}x{args.imgsz[1]}, {args.epochs} epochs, 2 cached views, "
        f"lr {args.lr}; smoke figures, not a ranking"
    )
    print(
        f"{'head':<12}{'parameters':>12}{'s/epoch':>10}{'best valid mIoU':>17}{'baseline':>10}"
        + "".join(f"{c:>12}" for c in args.classes)
    )
    for name, params, seconds, miou, base, per_class in rows:
        print(
            f"{name:<12}{params:>12,}{seconds:>10.2f}{miou:>17.4f}{base:>10.4f}"
            + "".join(f"{v:>12.4f}" for v in per_class)
        )


if __name__ == "__main__":
    main()
