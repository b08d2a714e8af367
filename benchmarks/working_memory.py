"""Feature extraction's working memory per head: measured (peak RSS growth of one forward pass on the CPU, each head
in its own process) beside the estimate the cache plan uses (`engine.features.plan_store`).

    python benchmarks/working_memory.py [--arch webdino-300m] [--imgsz 448] [--batch 4]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

import torch

from webdino_seg.engine.features import plan_store
from webdino_seg.models.builder import create_model


def measure(arch: str, head: str, size: int, batch: int) -> None:
    """Child process: print the peak RSS growth of one forward pass and the plan's estimate, in MiB."""
    model = create_model(arch, weights="random", head=head).eval()
    x = torch.randn(batch, 3, size, size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.inference_mode():
        model.features(x)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    width, p = model.backbone.embed_dim, model.backbone.patch_size
    layers = getattr(model.head, "layers", 1)
    plan = plan_store(
        1,
        (layers * width, size // p, size // p),
        (size, size),
        torch.device("cpu"),
        batch=batch,
        free={"cpu": 2**50},
        width=width,
    )
    print(f"{head:<12}{grown / 2**20:>14.0f}{plan.working_bytes / 2**20:>14.0f}")


def main() -> None:
    """One child process per head; a table of measured and estimated MiB."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="webdino-300m")
    parser.add_argument("--imgsz", type=int, default=448)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.arch, args.child, args.imgsz, args.batch)
        return
    print(f"{args.arch}, batch {args.batch} at {args.imgsz}x{args.imgsz}, float32 on the CPU")
    print(f"{'head':<12}{'measured MiB':>14}{'estimate MiB':>14}")
    for head in ("simple", "linear4", "multilayer", "guided"):
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--arch",
                args.arch,
                "--imgsz",
                str(args.imgsz),
                "--batch",
                str(args.batch),
                "--child",
                head,
            ],
            check=True,
        )


if __name__ == "__main__":
    main()
