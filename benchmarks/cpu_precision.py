"""The backbone on the CPU in every precision and engine, side by side in one run: PyTorch (float32 eager, bf16
autocast, dynamic int8 Linears), onnxruntime (float32, dynamic int8) and OpenVINO (float32, bf16, int8 weights with
activations quantized per token at run time), each where it is installed.

Speed: images/s, median [min - max] of --repeats timed runs after an untimed warm-up (the same input for every
engine; a figure spread wider than its median is "unreliable", not a speed-up). Accuracy: the patch tokens' cosine
similarity to float32 eager (the lowest over tokens and images). Random weights have LayerScale 1e-5, which makes
every block nearly the identity and any precision look exact, so the backbone is built with LayerScale 1 (as
trained models have them near). Building (export, quantization, compilation) is not timed.

    python benchmarks/cpu_precision.py [--arch webdino-300m] [--sizes 448 644] [--batches 1 4] [--repeats 3]
    python benchmarks/cpu_precision.py --sizes 448 --batches 1 --threads 1 2   # what --threads changes
    python benchmarks/cpu_precision.py --engines torch openvino                 # a subset of the engines
"""

from __future__ import annotations

import argparse
import importlib.metadata
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from measured_json import write_measured
from torch import nn

from webdino_seg.app.benchmark import repeat
from webdino_seg.inference import openvino as ov_engine
from webdino_seg.inference.precision import native_bf16, quantize
from webdino_seg.models.builder import create_backbone
from webdino_seg.utils.runtime import set_threads

Forward = Callable[[torch.Tensor], torch.Tensor]


class Tokens(nn.Module):
    """The backbone's normed patch tokens: what every engine runs."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)["x_norm_patchtokens"]


def torch_runs(model: Tokens) -> dict[str, Forward]:
    """PyTorch eager in float32, bf16 autocast (native bf16 only) and dynamic int8."""
    int8, _ = quantize(model)
    runs = {"torch fp32": model, "torch int8": int8}
    if native_bf16():

        def bf16(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)

        runs["torch bf16"] = bf16
    return runs


def openvino_runs(model: Tokens) -> dict[str, Forward]:
    """OpenVINO in float32, bf16 (native bf16 only) and int8, as `--engine openvino` runs them."""
    precisions = ["fp32", "int8"] + (["bf16"] if native_bf16() else [])
    return {f"openvino {p}": ov_engine.OpenVinoModel(model, p, native_bf16()) for p in precisions}


def onnxruntime_runs(model: Tokens, x: torch.Tensor, folder: Path) -> dict[str, Forward]:
    """onnxruntime in float32 and with dynamic int8 MatMuls (its quantize_dynamic, per-channel weights), for the
    shape of `x`."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = folder / f"{tuple(x.shape)}.onnx", folder / f"{tuple(x.shape)}-int8.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), fp32, input_names=["x"], opset_version=18, dynamo=True, verbose=False)
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    runs = {}
    for name, path in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        runs[name] = lambda t, s=session: torch.from_numpy(s.run(None, {"x": t.numpy()})[0])
    return runs


def _speed(forward: Forward, x: torch.Tensor, repeats: int) -> dict:
    def once() -> float:
        start = time.perf_counter()
        forward(x)
        return len(x) / (time.perf_counter() - start)

    return repeat(once, repeats, warmup=1)


def main() -> None:
    """Print one row per threads, size, batch and engine."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="webdino-300m")
    parser.add_argument("--sizes", type=int, nargs="+", default=[448, 644])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["torch", "onnxruntime", "openvino"],
        choices=["torch", "onnxruntime", "openvino"],
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[None],
        help="CPU thread counts to run with (default: the usable cores)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here (tools/tables.py reads them)")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = create_backbone(args.arch, weights="random", layerscale_init=1.0).eval()
    model = Tokens(backbone).eval()
    print(
        f"{args.arch} backbone, torch {torch.__version__}; images/s, median [min - max] of {args.repeats} after a "
        "warm-up; speed-up against torch fp32 at the same size, batch and threads"
    )
    print(f"{'threads':>8}{'size':>6}{'batch':>7}{'engine':>18} {'images/s':>28}{'speed-up':>12}{'min cosine':>12}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        for threads in args.threads:
            threads = set_threads(threads)
            runs = torch_runs(model) if "torch" in args.engines else {"torch fp32": model}
            if "openvino" in args.engines and ov_engine.available():
                runs |= openvino_runs(model)
            for size in args.sizes:
                for b in args.batches:
                    x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b))
                    more = onnxruntime_runs(model, x, Path(folder)) if "onnxruntime" in args.engines else {}
                    rows += _rows(runs | more, model, x, args.repeats, threads)
    if args.json:
        write_measured(args.json, "cpu-precision", **record(args.arch, args.repeats, rows))


def record(arch: str, repeats: int, rows: list[dict]) -> dict:
    """What the JSON holds besides the machine and date: the setting, the versions, one entry per printed row."""
    versions = {}
    for package in ("torch", "openvino", "onnxruntime"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"arch": arch, "repeats": repeats, "versions": versions, "rows": rows}


def _rows(runs: dict[str, Forward], model: Tokens, x: torch.Tensor, repeats: int, threads: int) -> list[dict]:
    """Print and return one row per engine and precision, at `x`'s size and batch."""
    out = []
    with torch.inference_mode():
        ref = model(x)
        base = None
        for name, forward in runs.items():
            tokens = forward(x).float()  # also builds (compiles) the engine for this shape, untimed
            speed = _speed(forward, x, repeats)
            cosine = F.cosine_similarity(ref.flatten(0, 1), tokens.flatten(0, 1), dim=-1).min().item()
            base = base or speed["median"]
            shown = f"{speed['median']:.3g} [{speed['min']:.3g} - {speed['max']:.3g}]"
            ratio = f"{speed['median'] / base:.2f}x" if speed["reliable"] else "unreliable"
            size, b = x.shape[-1], len(x)
            print(f"{threads:>8}{size:>6}{b:>7}{name:>18} {shown:>28}{ratio:>12}{cosine:>12.6f}", flush=True)
            engine, precision = name.split()
            figures = {k: speed[k] for k in ("median", "min", "max")}
            speedup = speed["median"] / base if speed["reliable"] else None
            out.append(
                {"threads": threads, "size": size, "batch": b, "engine": engine, "precision": precision}
                | figures
                | {"speedup": speedup, "min_cosine": cosine}
            )
    return out


if __name__ == "__main__":
    main()
