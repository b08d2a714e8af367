"""The backbone on the CPU in float32, bf16 (autocast) and int8 (dynamic int8 Linears), side by side in one run.

Speed: images/s, median [min - max] of --repeats timed runs after untimed warm-ups (the same input for every
precision). Accuracy: the patch tokens' cosine similarity to float32 (the lowest over tokens and images). Random
weights have LayerScale 1e-5, which makes every block nearly the identity and any precision look exact, so the
LayerScale factors are set to 1 (as trained models have them near) before anything is measured.

    python benchmarks/cpu_precision.py [--arch webdino-300m] [--sizes 448 644] [--batches 1 4] [--repeats 3]
    python benchmarks/cpu_precision.py --sizes 448 --batches 1 --threads 1 2   # what --threads changes
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from webdino_seg.app.benchmark import repeat
from webdino_seg.inference.precision import native_bf16, quantize
from webdino_seg.models.builder import create_backbone
from webdino_seg.utils.runtime import set_threads


def _speed(forward, x: torch.Tensor, repeats: int) -> dict:
    def once() -> float:
        start = time.perf_counter()
        forward(x)
        return len(x) / (time.perf_counter() - start)

    return repeat(once, repeats, warmup=1)


def main() -> None:
    """Print one row per size, batch and precision."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="webdino-300m")
    parser.add_argument("--sizes", type=int, nargs="+", default=[448, 644])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[None], help="CPU thread counts to run with "
                        "(default: the usable cores)")  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_backbone(args.arch, weights="random").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".gamma"):
                param.fill_(1.0)
    int8, _ = quantize(model)
    runs = {"fp32": model.forward_features, "int8": int8.forward_features}
    if native_bf16():
        def bf16(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.forward_features(x)

        runs["bf16"] = bf16
    print(f"{args.arch} backbone, torch {torch.__version__}; images/s, median [min - max] of {args.repeats} after a "
          "warm-up; speed-up against float32 at the same size, batch and threads")  # fmt: skip
    print(f"{'threads':>8}{'size':>6}{'batch':>7}{'precision':>11}{'images/s':>26}{'speed-up':>12}{'min cosine':>12}")
    for threads in args.threads:
        _rows(runs, model, args.sizes, args.batches, args.repeats, set_threads(threads))


def _rows(runs: dict, model, sizes: list[int], batches: list[int], repeats: int, threads: int) -> None:
    for size in sizes:
        for b in batches:
            x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b))
            with torch.inference_mode():
                ref = model.forward_features(x)["x_norm_patchtokens"]
                base = None
                for name, forward in runs.items():
                    speed = _speed(forward, x, repeats)
                    tokens = forward(x)["x_norm_patchtokens"].float()
                    cosine = F.cosine_similarity(ref.flatten(0, 1), tokens.flatten(0, 1), dim=-1).min().item()
                    base = base or speed["median"]
                    shown = f"{speed['median']:.3g} [{speed['min']:.3g} - {speed['max']:.3g}]"
                    ratio = f"{speed['median'] / base:.2f}x" if speed["reliable"] else "unreliable"
                    print(f"{threads:>8}{size:>6}{b:>7}{name:>11}{shown:>26}{ratio:>12}{cosine:>12.6f}", flush=True)


if __name__ == "__main__":
    main()
