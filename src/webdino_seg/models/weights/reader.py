"""Reading weights: a local file or folder, an ``https://`` URL or a Hub id, into a plain state dict.

Files are read with ``torch.load(weights_only=True)`` or safetensors; common training wrappers and
prefixes are taken off. Nothing here knows a key convention: see the per-family modules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...utils.download import download_url, quarantine
from .errors import StateDict, WeightsError, few

WRAPPERS = ("model", "state_dict", "teacher", "module")
PREFIXES = ("module.", "backbone.", "_orig_mod.", "dinov2.")
DROPPED = ("dino_head", "ibot_head")


def read_state_dict(path: str | Path) -> StateDict:
    """Read tensors from a ``.pth``/``.pt``/``.bin`` pickle (weights only), a ``.safetensors`` file or an HF folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return read_state_dict(path / name)
        index = path / "model.safetensors.index.json"
        if index.exists():
            shards = _shards(index)
            merged: StateDict = {}
            for shard in shards:
                merged.update(read_state_dict(path / shard))
            return merged
        raise WeightsError(f"{path}: folder has no model.safetensors, pytorch_model.bin or safetensors index")
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    return unwrap(safe_torch_load(path), source=str(path))


def read_weights(source: str | Path) -> tuple[Path, StateDict]:
    """`resolve_weights` then `read_state_dict`; a downloaded file that cannot be read is moved aside (the next
    try downloads it again) and the error names the URL it came from."""
    path = resolve_weights(source)
    try:
        return path, read_state_dict(path)
    except WeightsError as err:
        if not str(source).startswith(("http://", "https://")):
            raise
        bad = quarantine(path)
        raise WeightsError(
            f"{err} (downloaded from {source}; moved aside to {bad}: the next try downloads it again)"
        ) from None


def _shards(index: Path) -> list[str]:
    """The shard files a safetensors index names; an index without a ``weight_map`` of names is a WeightsError."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, AttributeError) as err:
        raise WeightsError(f"{index}: not a safetensors index ({type(err).__name__}: {err})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WeightsError(f'{index}: has no "weight_map" of tensor names to shard files')
    return sorted(set(weight_map.values()))


def safe_torch_load(path: Path, what: str = "PyTorch checkpoint") -> object:
    """`torch.load(weights_only=True)` on the CPU; a file that is not a `what`, or would run code, is a WeightsError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler fails in many ways on foreign bytes
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        code = [line for line in lines if "GLOBAL" in line] or _foreign_imports(path)
        if code:
            raise WeightsError(
                f"{path}: refused to load: the file is not a plain tensor checkpoint and would need to run code "
                f"to unpickle ({code[0]})"
            ) from None
        detail = next((line for line in lines if "Unsupported" in line), lines[0])  # not torch's generic advice
        raise WeightsError(f"{path}: not a {what} ({type(err).__name__}: {detail})") from None


def _foreign_imports(path: Path) -> list[str]:
    """Names outside torch/collections that a pickle (plain or inside a torch zip) imports; read, never run."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        names, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle at all
        return []
    return [f"imports {n}" for n in names if not n.startswith(("torch.", "collections."))]


def unwrap(obj: object, source: str = "checkpoint") -> StateDict:
    """Take a state dict out of the common wrappers and strip training prefixes and SSL heads."""
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("webdino-seg/"):
        raise WeightsError(
            f"{source}: this is a webdino-seg model checkpoint, not backbone weights; pass it as --model "
            "(to evaluate, predict or video), or --resume its run folder"
        )
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise WeightsError(
                f"{source}: not a state dict: top-level keys {few(sorted(map(str, obj)))} hold no tensors "
                f"and none of {WRAPPERS} wraps one"
            )
        obj = inner
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    out: StateDict = {}
    for key, value in obj.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        if key.startswith(DROPPED):
            continue
        out[key] = value
    return out


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def resolve_weights(source: str | Path) -> Path:
    """Turn a local path, an ``https://`` URL or a Hub id (``owner/name``) into a local file or folder."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        return download_url(text)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.endswith((".pth", ".pt", ".bin", ".safetensors")):
        return _hub_download(text)
    raise FileNotFoundError(
        f"weights not found: {text} is neither an existing file or folder, an https:// URL, nor a Hub id "
        "like facebook/webssl-dino300m-full2b-224"
    )


def _hub_download(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        hf_hub_download(repo_id, "config.json")
        try:
            return Path(hf_hub_download(repo_id, "model.safetensors")).parent
        except EntryNotFoundError:  # older repos ship only the pickle (read with weights_only=True)
            return Path(hf_hub_download(repo_id, "pytorch_model.bin")).parent
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"Hub id {repo_id}: not in the local Hugging Face cache and the Hub cannot be reached ({err}). "
            "Download it on a connected machine with `hf download` or pass a local path."
        ) from None
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"Hub id {repo_id}: {err}") from None
