"""ONNX export of a whole segmentation model, and running an exported model with onnxruntime.

The graph takes ``image``: float32 (B, 3, H, W) RGB in [0, 1] at the exported size, and holds the
normalisation, the backbone, the head and the upsampling. Outputs: ``logits`` (B, C, H, W),
``grid_logits`` (B, C, H/p, W/p) and ``class_ids`` (B, H, W, int64). Metadata: class names,
mean/std, image size, patch size, backbone. Needs the ``onnx`` extra (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoint import load_model
from ..models.layers import check_image_size
from ..models.segmentation import SegmentationModel
from ..utils.files import check_output_file, publish
from ..utils.outputs import check_suffix, guard, may_replace

FORMAT = "webdino-seg/onnx-1"
OPSET = 18  # scaled_dot_product_attention and bicubic resize export cleanly from here on


class ExportedGraph(nn.Module):
    """What the ONNX graph computes: normalise, backbone, head, upsample, class ids."""

    def __init__(self, model: SegmentationModel, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grid = self.model((image - self.mean) / self.std)
        logits = F.interpolate(grid, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits, grid, logits.argmax(1)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ONNX export needs the onnx extra: pip install 'webdino-seg[onnx]' ({err})") from None


def export_onnx(
    model_path: str | Path,
    out: str | Path,
    *,
    imgsz: tuple[int, int] | None = None,
    dynamic: bool = False,
    weights: str | None = None,
    log=print,
    overwrite: bool = False,
    int8: bool = False,
) -> dict:
    """Export a trained checkpoint to ONNX at `imgsz` (default: its training size), checked with onnxruntime.

    `dynamic` makes the batch size free (the image size stays the exported one); `int8` quantizes every MatMul
    with onnxruntime's dynamic quantization (per-channel int8 weights, activations quantized at run time).
    Returns what was written and the largest logit difference between onnxruntime and PyTorch on a test input.
    """
    _require_onnx()
    import onnx

    out = plan_export(model_path, out, weights, overwrite)
    model, ckpt = load_model(model_path, weights)
    size = tuple(imgsz or ckpt["imgsz"])
    check_image_size(*size, model.backbone.patch_size)
    graph = ExportedGraph(model.float().eval(), ckpt["mean"], ckpt["std"]).eval()
    example = torch.rand(2 if dynamic else 1, 3, *size, generator=torch.Generator().manual_seed(0))
    dims = {"image": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic else None
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        proto = _trace(graph, example, dims)
        for key, value in _metadata(ckpt, model, size, dynamic, model_path, int8).items():
            proto.metadata_props.add(key=key, value=value)
        big = proto.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit: weights go beside it
        if int8:
            _save_int8(proto, tmp, big)
        else:
            onnx.save_model(proto, tmp, save_as_external_data=big, location=f"{out.name}.data" if big else None)
        publish(tmp, out)
    except OSError as err:  # a full disk, a folder that became read-only: the message names what was written
        Path(tmp).unlink(missing_ok=True)
        raise OSError(
            err.errno, f"cannot write {out}: {err.strerror or err}; the previous export, if any, is intact"
        ) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    diff = verify(out, graph, size)
    batch = "any batch" if dynamic else "batch 1"
    batch += ", int8 MatMuls" if int8 else ""
    log(
        f"exported {model_path} -> {out} ({out.stat().st_size / 2**20:.1f} MiB, {size[0]}x{size[1]}, {batch}); "
        f"onnxruntime vs PyTorch: max abs logit difference {diff:.2e}"
    )
    return {"out": str(out), "imgsz": list(size), "bytes": out.stat().st_size, "max_abs_diff": diff}


def _trace(graph: torch.nn.Module, example: torch.Tensor, dims: dict | None):
    """The ONNX graph (a ModelProto) of `graph` traced at `example`, its batch free where `dims` says."""
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=["image"],
            dynamo=True,
            opset_version=OPSET,
            output_names=["logits", "grid_logits", "class_ids"],
            dynamic_shapes=dims,
            verbose=False,
        )
    return program.model_proto


def _metadata(
    ckpt: dict, model: SegmentationModel, size: tuple[int, int], dynamic: bool, source: str | Path, int8: bool
) -> dict[str, str]:
    """What the graph says about itself: the classes, normalisation, size, backbone, head, precision, source."""
    return {
        "format": FORMAT,
        "class_names": json.dumps(ckpt["class_names"]),
        "mean": json.dumps(ckpt["mean"]),
        "std": json.dumps(ckpt["std"]),
        "imgsz": json.dumps(list(size)),
        "patch_size": str(model.backbone.patch_size),
        "backbone": model.backbone.cfg.name,
        "head": ckpt["head_name"],
        "dynamic_batch": str(dynamic).lower(),
        "source": str(source),
        "precision": "int8" if int8 else "fp32",
    }


def _save_int8(proto, path: str, big: bool) -> None:
    """Write `proto` to `path` with its MatMuls dynamically quantized to int8 (the float graph goes to a temporary
    folder beside `path`, removed whatever happens)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=Path(path).parent, prefix=".int8-") as work:
        fp32 = Path(work) / "fp32.onnx"
        onnx.save_model(proto, fp32, save_as_external_data=big, location="fp32.onnx.data" if big else None)
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])


def plan_export(model_path: str | Path, out: str | Path, weights: str | None, overwrite: bool) -> Path:
    """The output checked before anything loads: an .onnx name, not the model or its weights, and not a file
    webdino-seg did not write unless `overwrite`."""
    out = check_output_file(out)
    check_suffix(out, (".onnx",), "export writes an ONNX model")
    guard([out, out.with_name(out.name + ".data")], [Path(model_path), *([Path(weights)] if weights else [])])
    may_replace(out, overwrite)
    return out


def verify(path: str | Path, graph: ExportedGraph, size: tuple[int, int]) -> float:
    """Largest absolute difference of the logits between onnxruntime and PyTorch on a seeded input."""
    import onnxruntime as ort

    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = graph(x)[0].numpy()
    return float(np.abs(got - expected).max())


class _Geometry:
    """Stands in for a backbone where the Predictor asks only for the patch size."""

    def __init__(self, patch_size: int) -> None:
        self.patch_size = patch_size


class OnnxSegmentationModel(nn.Module):
    """An exported model run by onnxruntime, called like a SegmentationModel: images in, token-grid logits out.

    Its input is RGB in [0, 1]: the normalisation is inside the graph, so the Predictor that drives it
    uses mean 0 and std 1.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        super().__init__()
        _require_onnx()
        import onnxruntime as ort

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        want_cuda = torch.device(device).type == "cuda" if str(device) != "auto" else torch.cuda.is_available()
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if want_cuda and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime's own error types
            raise ValueError(f"{path}: not an ONNX model onnxruntime can load ({err})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not an ONNX model exported by webdino-seg (no {FORMAT!r} metadata)")
        self.meta = {key: json.loads(meta[key]) for key in ("class_names", "mean", "std", "imgsz")}
        self.meta["precision"] = meta.get("precision", "fp32")  # what the graph computes in (export --int8)
        self.dynamic = meta.get("dynamic_batch") == "true"
        self.backbone = _Geometry(int(meta["patch_size"]))
        self.providers = self.session.get_providers()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Token-grid logits for (B, 3, H, W) images in [0, 1] at the exported size."""
        array = images.detach().float().cpu().numpy()
        parts = [array] if self.dynamic else [array[i : i + 1] for i in range(len(array))]
        grids = [self.session.run(["grid_logits"], {"image": part})[0] for part in parts]
        return torch.from_numpy(np.concatenate(grids)).to(images.device)
