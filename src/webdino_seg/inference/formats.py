"""The export formats: one table that `export` writes from and model loading reads (`predict --model model.xml`).

Each format names the file suffix it writes, the function that exports a checkpoint to it, the model class that
runs such a file (images in [0, 1] in, token-grid logits out, its metadata in ``meta``) and the engine that
runs it. Their modules are imported when a format is used: listing the formats needs no onnx or OpenVINO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .names import EXPORT_FORMATS


@dataclass(frozen=True)
class ExportFormat:
    """What an export format writes, and how a file of it is run."""

    name: str
    suffix: str  # the file export writes and loading recognises (e.g. ".onnx")
    what: str  # one line on what the file is
    module: Callable[[], object]  # the module holding the exporter and the runtime, imported when called
    exporter: str  # (model_path, out, *, imgsz, dynamic, weights, log, overwrite, int8) -> dict
    runtime: str  # (path, device) -> a module: images in [0, 1] in, token-grid logits out; .meta, .backbone
    engine: str  # what runs it, as predict and evaluate say

    def export(self) -> Callable[..., dict]:
        """The exporter (its module imported now)."""
        return getattr(self.module(), self.exporter)

    def load(self, path: str | Path, device: str = "cpu") -> object:
        """The model in file `path`, ready to run on `device`."""
        return getattr(self.module(), self.runtime)(path, device)


def _onnx() -> object:
    from . import onnx  # onnx and onnxruntime: imported when the format is used

    return onnx


def _openvino_ir() -> object:
    from . import openvino_ir  # OpenVINO: imported when the format is used

    return openvino_ir


FORMATS = {
    "onnx": ExportFormat(
        "onnx",
        ".onnx",
        "an ONNX graph run by onnxruntime",
        _onnx,
        "export_onnx",
        "OnnxSegmentationModel",
        "onnxruntime",
    ),
    "openvino": ExportFormat(
        "openvino",
        ".xml",
        "an OpenVINO IR (model.xml + model.bin) run by OpenVINO on the CPU",
        _openvino_ir,
        "export_openvino",
        "OpenVinoIRModel",
        "openvino",
    ),
}
if tuple(FORMATS) != EXPORT_FORMATS:  # the CLI's choices (names.py) and this table list the same formats
    raise ImportError(f"export formats {tuple(FORMATS)} differ from names.EXPORT_FORMATS {EXPORT_FORMATS}")


def for_file(path: str | Path) -> ExportFormat | None:
    """The export format of a model file, by its suffix (None: a training checkpoint)."""
    suffix = Path(path).suffix.lower()
    return next((f for f in FORMATS.values() if f.suffix == suffix), None)


def choose(name: str | None, out: str | Path) -> ExportFormat:
    """The format `export` writes: `name`, else the one the output's suffix says, else ONNX; a name and a suffix
    that disagree are an error."""
    by_suffix = for_file(out)
    if name is None:
        return by_suffix or FORMATS["onnx"]
    chosen = FORMATS[name]
    if Path(out).suffix.lower() != chosen.suffix:
        raise ValueError(f"--format {name} writes a {chosen.suffix} file; --out {out} is not one")
    return chosen
