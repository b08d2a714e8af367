"""Export to an OpenVINO IR on disk (``model.xml`` + ``model.bin``), and running one: `predict --model model.xml`
compiles the saved graph instead of rebuilding it from a checkpoint (the `openvino` extra).

The graph is the ONNX export's (`onnx.ExportedGraph`: normalisation, backbone, head, upsampling; input RGB in
[0, 1] at the exported size; outputs logits, token-grid logits and class ids), taken by `torch.export` and
converted by OpenVINO, its weights kept in float32; ``--int8`` stores every Linear's weights as per-channel int8
first (as the in-memory OpenVINO engine does). The metadata (classes, normalisation, size, backbone, precision)
is in the IR's runtime info.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.checkpoint import load_model
from ..models.layers import check_image_size
from ..utils.files import check_output_file, publish
from ..utils.outputs import check_suffix, guard, may_replace
from .onnx import ExportedGraph, _Geometry, _metadata
from .openvino import group_size, int8_copy

FORMAT = "webdino-seg/openvino-ir-1"
INFO = "webdino_seg"  # the runtime-info section the metadata is written under
OUTPUTS = ("logits", "grid_logits", "class_ids")


def _require_openvino() -> None:
    try:
        import openvino  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"OpenVINO export needs the openvino extra: pip install 'webdino-seg[openvino]' ({err})"
        ) from None


def plan_export(model_path: str | Path, out: str | Path, weights: str | None, overwrite: bool) -> Path:
    """The output checked before anything loads: an .xml name (its .bin beside it), neither of them the model or
    its weights, and neither a file webdino-seg did not write unless `overwrite`."""
    out = check_output_file(out)
    check_suffix(out, (".xml",), "export --format openvino writes an OpenVINO IR (model.xml + model.bin)")
    guard([out, out.with_suffix(".bin")], [Path(model_path), *([Path(weights)] if weights else [])])
    may_replace(out, overwrite)
    may_replace(out.with_suffix(".bin"), overwrite)
    return out


def export_openvino(
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
    """Export a trained checkpoint to an OpenVINO IR at `imgsz` (default: its training size), checked against
    PyTorch; `int8` stores the Linear weights as int8. Both files are written beside each other atomically (the
    .bin first): a stopped export leaves the earlier pair, if any, as it was. Returns what was written and the
    largest logit difference between OpenVINO and PyTorch on a test input."""
    _require_openvino()
    if dynamic:
        raise ValueError("--dynamic: an OpenVINO IR export has a batch of 1 (predict runs it image by image)")
    import openvino as ov

    out = plan_export(model_path, out, weights, overwrite)
    model, ckpt = load_model(model_path, weights)
    size = tuple(imgsz or ckpt["imgsz"])
    check_image_size(*size, model.backbone.patch_size)
    net = model.float().eval()
    if int8:
        net = int8_copy(net, group_size(net))[0]
    graph = ExportedGraph(net, ckpt["mean"], ckpt["std"]).eval()
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's and OpenVINO's notes on internals
        converted = ov.convert_model(torch.export.export(graph, (torch.zeros(1, 3, *size),)))
    for port, name in zip(converted.outputs, OUTPUTS, strict=True):
        port.get_tensor().set_names({name})
    for key, value in _metadata(ckpt, model, size, False, model_path, int8).items():
        converted.set_rt_info(value, [INFO, key])
    converted.set_rt_info(FORMAT, [INFO, "format"])
    _save(converted, out)
    diff = verify(out, graph, size)
    total = out.stat().st_size + out.with_suffix(".bin").stat().st_size
    log(
        f"exported {model_path} -> {out} + {out.with_suffix('.bin').name} ({total / 2**20:.1f} MiB, {size[0]}x{size[1]}"
        f"{', int8 weights' if int8 else ''}, {time.perf_counter() - start:.1f} s); OpenVINO vs PyTorch: max abs "
        f"logit difference {diff:.2e}"
    )
    return {"out": str(out), "imgsz": list(size), "bytes": total, "max_abs_diff": diff}


def _save(converted: object, out: Path) -> None:
    """Write the IR into a temp folder beside `out`, then rename the .bin and then the .xml into place."""
    import openvino as ov

    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        ov.save_model(converted, str(work / out.name), compress_to_fp16=False)  # float32 weights, as trained
        publish(work / out.with_suffix(".bin").name, out.with_suffix(".bin"))
        publish(work / out.name, out)
    except OSError as err:  # a full disk, a folder that became read-only
        raise OSError(err.errno, f"cannot write {out}: {err.strerror or err}") from err
    finally:
        shutil.rmtree(work, ignore_errors=True)


def verify(path: Path, graph: ExportedGraph, size: tuple[int, int]) -> float:
    """Largest absolute difference of the logits between the saved IR (compiled in float32) and PyTorch."""
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    got = OpenVinoIRModel(path).run(x.numpy(), "logits")
    with torch.no_grad():
        expected = graph(x)[0].numpy()
    return float(np.abs(got - expected).max())


def _info(model: object, key: str) -> str:
    """One of the metadata values an export wrote into the IR's runtime info."""
    return model.get_rt_info([INFO, key]).astype(str)


class OpenVinoIRModel(nn.Module):
    """An exported IR compiled by OpenVINO for the CPU (float32), called like a SegmentationModel: images in
    [0, 1] in (the normalisation is inside the graph), token-grid logits out."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        super().__init__()
        _require_openvino()
        import openvino as ov

        path = Path(path)
        if not path.exists() or not path.with_suffix(".bin").exists():
            raise FileNotFoundError(f"OpenVINO model not found: {path} and {path.with_suffix('.bin').name} beside it")
        if str(device) not in ("cpu", "auto"):
            raise ValueError(f"{path}: an OpenVINO IR runs on the CPU here (--device cpu), not {device}")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as err:  # OpenVINO's own error types
            raise ValueError(f"{path}: not an OpenVINO IR OpenVINO can read ({err})") from None
        if not model.has_rt_info([INFO, "format"]) or _info(model, "format") != FORMAT:
            raise ValueError(f"{path}: not an OpenVINO IR exported by webdino-seg (no {FORMAT!r} metadata)")
        self.meta = {key: json.loads(_info(model, key)) for key in ("class_names", "mean", "std", "imgsz")}
        self.meta["precision"] = _info(model, "precision")
        self.backbone = _Geometry(int(_info(model, "patch_size")))
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self.compiled = core.compile_model(model, "CPU", config)

    def run(self, array: np.ndarray, output: str) -> np.ndarray:
        """One output of the graph for a (B, 3, H, W) float32 array in [0, 1], image by image."""
        return np.concatenate([self.compiled(array[i : i + 1])[output] for i in range(len(array))])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Token-grid logits for (B, 3, H, W) images in [0, 1] at the exported size."""
        grids = self.run(images.detach().float().cpu().numpy(), "grid_logits")
        return torch.from_numpy(grids).to(images.device)
