"""What a command may write: never onto one of its own inputs, and never over a file it did not write itself
unless asked (``--overwrite``).

Every output that can carry a mark carries ``MARK``: PNG and JPEG text, MP4 metadata, a ``format`` field in
JSON, ONNX metadata, safetensors metadata. An existing file with the mark is the command's own earlier
output and is replaced; anything else needs ``--overwrite``. An official ``.pth`` cannot carry a mark.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

MARK = "webdino-seg"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")


class OutputError(ValueError):
    """An output that would destroy an input or a file the command did not write; the message names both."""


def _identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of the file `path` leads to (links followed), or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _real(path: Path) -> Path:
    """The path with every link followed, as far as they lead (a link loop is left to the reader to report)."""
    return Path(os.path.realpath(path))


def guard(outputs: Iterable[Path], inputs: Iterable[Path], flag: str = "--out") -> None:
    """Refuse, naming both, an output that is one of the inputs: the same path, a symbolic link to it or a hard
    link of it; and two outputs that are one file."""
    by_identity, by_path = {}, {}
    for item in inputs:
        item = Path(item)
        ident = _identity(item)
        if ident is not None:
            by_identity[ident] = item
        by_path[_real(item)] = item
    seen: dict[Path, Path] = {}
    for out in outputs:
        out = Path(out)
        real, ident = _real(out), _identity(out)
        hit = (by_identity.get(ident) if ident is not None else None) or by_path.get(real)
        if hit is not None:
            same = "" if _real(hit) == real else " (the same file under another name)"
            raise OutputError(
                f"{flag} {out} would overwrite the input {hit}{same}; a command never writes onto its "
                f"own input: choose another {flag}"
            )
        if real in seen:
            raise OutputError(f"{flag}: {seen[real]} and {out} are one output; two inputs would write it")
        seen[real] = out


def outside(folder: str | Path, inputs: Iterable[str | Path], flag: str = "--out") -> None:
    """Refuse, naming both, an output folder that is one of the input folders or lies inside one (links
    followed): what a command writes never lands among its inputs."""
    real = _real(Path(folder))
    for root in inputs:
        if Path(root).is_dir() and (real == (top := _real(Path(root))) or top in real.parents):
            raise OutputError(
                f"{flag} {folder} is inside the input folder {root}; a command never writes into its "
                f"own input: choose a {flag} outside it"
            )


def may_replace(path: Path, overwrite: bool, flag: str = "--out") -> None:
    """Refuse to replace an existing `path` that this package did not write, unless `overwrite`."""
    path = Path(path)
    if overwrite or not (path.exists() or path.is_symlink()) or is_ours(path):
        return
    if path.is_dir() and not any(path.iterdir()):  # an empty folder holds nothing to lose
        return
    what = "folder" if path.is_dir() else "file"
    raise OutputError(
        f"{flag} {path}: a {what} that webdino-seg did not write is there; pass --overwrite to replace "
        f"it, or choose another {flag}"
    )


def is_ours(path: Path) -> bool:
    """Whether `path` carries the mark of a webdino-seg output."""
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            return _safetensors_ours(path / "model.safetensors") or _json_ours(path / "report.json")
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as img:
                text = str(img.info.get("Software", "")) + str(img.info.get("comment", b""))
            return MARK in text
        if suffix == ".json":
            return _json_ours(path)
        if suffix in VIDEO_SUFFIXES:
            import av

            with av.open(str(path)) as container:
                return container.metadata.get("comment", "").startswith(MARK)
        if suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as npz:
                return "software" in npz.files and str(npz["software"]).startswith(MARK)
        if suffix == ".onnx":
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            return any(p.key == "format" and p.value.startswith(MARK) for p in model.metadata_props)
        if suffix == ".xml":  # an OpenVINO IR: its runtime info names the format
            return f'value="{MARK}/openvino-ir' in path.read_text(errors="replace")
        if suffix == ".bin":  # an OpenVINO IR's weights: ours when the .xml beside it is
            return path.with_suffix(".xml").is_file() and is_ours(path.with_suffix(".xml"))
    except Exception:  # unreadable or foreign: not ours
        return False
    return False


def _json_ours(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("format", "")).startswith(MARK)


def _safetensors_ours(path: Path) -> bool:
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("producer") == MARK


def check_suffix(path: Path, allowed: tuple[str, ...], what: str, flag: str = "--out") -> None:
    """Refuse an output name whose extension does not say what is written."""
    if path.suffix.lower() not in allowed:
        raise OutputError(f"{flag} {path}: {what}; give a name ending in {' or '.join(allowed)}")
