"""Export Web-DINO 300M (random weights, a SimpleDecoder head) to ONNX and time onnxruntime against PyTorch.

    python benchmarks/onnx_export.py [--arch webdino-300m] [--imgsz 448 448] [--repeats 3]

Prints the file size, the parity figure and the per-image latency of both on this machine's CPU
(median of `--repeats` runs, each the mean of a few images, in the same process).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from webdino_seg.inference.onnx import export_onnx
from webdino_seg.models.builder import create_model
from webdino_seg.models.checkpoint import backbone_identity, save_model
from webdino_seg.models.variants import IMAGENET_MEAN, IMAGENET_STD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="webdino-300m")
    parser.add_argument("--imgsz", nargs=2, type=int, default=[448, 448])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=3, help="images per timed run")
    args = parser.parse_args()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        model = create_model(args.arch, weights="random", seed=0).eval()
        ckpt = Path(tmp) / "model.pth"
        meta = {
            "imgsz": args.imgsz,
            "class_names": ["background", "person"],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "config": {},
            "head_name": "simple",
        }
        save_model(ckpt, model, backbone_identity(model.backbone, "random", 0), meta)
        start = time.perf_counter()
        info = export_onnx(ckpt, Path(tmp) / "model.onnx", imgsz=tuple(args.imgsz))
        export_s = time.perf_counter() - start
        session = ort.InferenceSession(info["out"], providers=["CPUExecutionProvider"])
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = torch.rand(1, 3, *args.imgsz, generator=torch.Generator().manual_seed(3))

        def torch_run() -> None:
            with torch.inference_mode():
                model((x - mean) / std)

        def ort_run() -> None:
            session.run(["grid_logits"], {"image": x.numpy()})

        figures = {}
        for name, fn in (("pytorch", torch_run), ("onnxruntime", ort_run)):
            fn()  # warm-up
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for _ in range(args.images):
                    fn()
                runs.append((time.perf_counter() - t0) / args.images)
            figures[name] = runs
        print(
            f"{args.arch} at {args.imgsz[0]}x{args.imgsz[1]}, {torch.get_num_threads()} CPU threads, torch "
            f"{torch.__version__}, onnxruntime {ort.__version__}"
        )
        print(
            f"export: {info['bytes'] / 2**20:.0f} MiB in {export_s:.0f} s; max abs logit difference onnxruntime vs "
            f"PyTorch {info['max_abs_diff']:.2e}"
        )
        for name, runs in figures.items():
            print(
                f"{name:<12} {1000 * statistics.median(runs):8.0f} ms/image (median of {len(runs)}; "
                f"min {1000 * min(runs):.0f}, max {1000 * max(runs):.0f})"
            )
        ratio = statistics.median(figures["pytorch"]) / statistics.median(figures["onnxruntime"])
        print(f"onnxruntime / PyTorch speed: {ratio:.2f}x")


if __name__ == "__main__":
    main()
