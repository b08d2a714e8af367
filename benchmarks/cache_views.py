"""How the number of cached augmented views changes mIoU and time: prints one row per setting.

    python benchmarks/cache_views.py --data data/pennfudan [--arch webdino-tiny --imgsz 224 --epochs 20]

With `--cache-views` equal to `--epochs` the cached run sees exactly the uncached run's data.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from webdino_seg import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="a prepared dataset folder")
    parser.add_argument("--arch", default="webdino-tiny")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    settings = [("no cache (tutorial way)", {"cache": False})]
    settings += [(f"cache, {v} view(s)", {"cache_views": v}) for v in [*args.views, args.epochs]]
    print(f"{args.arch} ({args.weights}) at {args.imgsz}x{args.imgsz}, {args.epochs} epochs, lr {args.lr}")
    print(f"{'setting':<28}{'best valid mIoU':>16}{'final valid mIoU':>18}{'seconds':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(settings):
            cfg = TrainConfig(
                data=args.data,
                out=str(Path(tmp) / f"run{i}"),
                arch=args.arch,
                weights=args.weights,
                imgsz=(args.imgsz, args.imgsz),
                epochs=args.epochs,
                lr=args.lr,
                workers=2,
                seed=0,
                **extra,
            )
            start = time.perf_counter()
            run = train(cfg, log=lambda *_: None)
            seconds = time.perf_counter() - start
            with open(run / "metrics.csv") as f:
                miou = [float(r["valid_miou"]) for r in csv.DictReader(f)]
            print(f"{name:<28}{max(miou):>16.4f}{miou[-1]:>18.4f}{seconds:>10.1f}")


if __name__ == "__main__":
    main()
