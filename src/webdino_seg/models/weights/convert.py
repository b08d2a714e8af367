"""Converting backbone weights between the official ``.pth`` and a Hugging Face folder, both families.

Every key is mapped by the family's key table, which pops what it maps: a key left over is an error,
so nothing is silently dropped. Shapes are written as read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...utils.files import atomic_write, atomic_write_text
from ...utils.outputs import MARK, OutputError, check_suffix, guard, may_replace
from ..variants import VARIANTS, BackboneConfig
from .errors import WeightsError
from .families import Family
from .formats import guess_variant, variant_from_keys
from .known import detect
from .reader import read_state_dict, resolve_weights


def _config(src: Path, sd: dict, fmt: str, family: Family) -> BackboneConfig:
    """The architecture of `src`: from an HF ``config.json`` beside it, else told from its keys and shapes."""
    hf_json = src / "config.json" if src.is_dir() else src.with_name("config.json")
    if hf_json.exists() and fmt.startswith("hf"):
        base = VARIANTS.get(guess_variant(sd) or "") or VARIANTS[family.base_variant]
        return family.config_from_hf(read_hf_config(hf_json, family.hf_keys), base)
    return variant_from_keys(sd, str(src))


def read_hf_config(path: Path, needed: tuple[str, ...]) -> dict:
    """A Hugging Face ``config.json`` as a dict whose architecture numbers are numbers; anything else is a
    `WeightsError` naming the file and the field."""
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise WeightsError(f"{path}: not JSON ({err})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: a config.json holds an object of settings, found a {type(config).__name__}")
    for key in needed:
        if key not in config:
            raise WeightsError(f"{path}: lacks {key!r}, which the architecture needs")
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 1:
            raise WeightsError(f"{path}: {key!r} is {config[key]!r}, not a positive whole number")
    return config


def convert_weights(
    src: str | Path, dst: str | Path, to: str, cfg: BackboneConfig | None = None, overwrite: bool = False
) -> str:
    """Convert a checkpoint between official ``.pth`` (chunked as the variant's factory) and an HF folder.

    `cfg` supplies head count and chunking; when absent it is taken from an HF ``config.json`` or
    told from the tensor shapes. Returns the detected input format. The output never replaces the input, and
    replaces a file (or folder) webdino-seg did not write only with `overwrite`.
    """
    if to not in ("hf", "official"):
        raise ValueError(f"unknown target format {to!r}; use 'hf' or 'official'")
    dst = Path(dst)
    weights = (".pth", ".pt", ".bin", ".safetensors")
    if to == "official":
        check_suffix(dst, weights[:3], "--to official writes a PyTorch .pth file", "output")
    elif dst.suffix.lower() in weights:
        raise OutputError(
            f"output {dst}: --to hf writes a folder (model.safetensors and config.json); give a folder name"
        )
    src_path = resolve_weights(src)
    sources = [p for p in src_path.rglob("*") if p.is_file()] if src_path.is_dir() else [src_path]
    guard([dst, dst / "model.safetensors", dst / "config.json"], sources, "output")
    may_replace(dst, overwrite, "output")
    raw = read_state_dict(src_path)
    family, fmt = detect(raw)
    sd = family.to_official(raw, fmt)
    cfg = cfg or _config(src_path, sd, fmt, family)
    if cfg.family != family.name:
        raise WeightsError(f"{src_path}: a {fmt} checkpoint cannot be written as {cfg.name} ({cfg.family})")
    if to == "official":
        out = family.for_file(sd, cfg)
        atomic_write(dst, lambda f: torch.save(out, f))
        return fmt
    from safetensors.torch import save

    dst.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in family.official_to_hf(sd).items()}
    blob = save(tensors, metadata={"format": "pt", "producer": MARK})  # the mark: a later run may replace it
    atomic_write(dst / "model.safetensors", lambda f: f.write(blob))
    atomic_write_text(dst / "config.json", json.dumps(family.hf_config(cfg), indent=2) + "\n")
    return fmt
