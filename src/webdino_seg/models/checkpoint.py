"""Model checkpoints: the head (and a fine-tuned backbone), settings, and the backbone's identity.

A frozen backbone is not copied into every file: the checkpoint names its variant, the weights
source and the sha256 of the weights file, and `load_model` fetches and verifies them again.
Random backbones (smoke tests) are rebuilt from their seed and checked against a fingerprint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..utils.download import sha256_file
from ..utils.files import atomic_write
from .builder import backbone_class, build_backbone
from .dinov2 import DinoVisionTransformer
from .heads import create_head, head_name
from .segmentation import SegmentationModel
from .variants import BackboneConfig
from .weights.errors import WeightsError
from .weights.reader import resolve_weights, safe_torch_load

FORMAT = "webdino-seg/1"
RUN_RECORD = "run.json"  # in a run folder: its run id (which every checkpoint it writes carries) and settings


def run_id_of(folder: str | Path) -> str | None:
    """The run id recorded in `folder`'s run.json, or None where there is none (not a run folder, or older)."""
    import json

    try:
        record = json.loads((Path(folder) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    run_id = record.get("run_id") if isinstance(record, dict) else None
    return run_id if isinstance(run_id, str) else None


def fingerprint(module: torch.nn.Module) -> float:
    """A cheap checksum of all parameters (float64 sum of values and absolute values)."""
    with torch.no_grad():
        return float(sum(p.double().sum() + p.double().abs().sum() for p in module.parameters()))


def backbone_identity(backbone: DinoVisionTransformer, weights: str | None, seed: int) -> dict:
    """What a checkpoint records about its backbone so it can be found and verified again."""
    identity = {
        "arch": backbone.cfg.name,
        "config": dataclasses.asdict(backbone.cfg),
        "weights": weights or "random",
        "seed": seed,
    }
    if weights in (None, "random"):
        identity["fingerprint"] = fingerprint(backbone)
    else:
        path = Path(backbone.weights_info["path"])
        identity.update(path=str(path), format=backbone.weights_info["format"], sha256=_weights_sha256(path))
    return identity


def _weights_sha256(path: Path) -> str | None:
    """sha256 of a weights file, or of an HF folder's model.safetensors (None when there is none)."""
    file = path / "model.safetensors" if path.is_dir() else path
    return sha256_file(file) if file.exists() else None


def save_model(path: str | Path, model: SegmentationModel, identity: dict, meta: dict) -> Path:
    """Write a model checkpoint atomically; `meta` holds imgsz, class names, mean/std, config, metrics."""
    return write_checkpoint(path, model_payload(model, identity, meta))


def model_payload(model: SegmentationModel, identity: dict, meta: dict, copy: bool = False) -> dict:
    """What a model checkpoint holds; with `copy`, a snapshot on the CPU that later training does not change
    (for a write in the background)."""
    payload = {
        "format": FORMAT,
        "head": model.head.state_dict(),
        "head_name": head_name(model.head),
        "fine_tune": model.fine_tune,
        "backbone": model.backbone.state_dict() if model.fine_tune else None,
        "backbone_identity": identity,
        **meta,
    }
    return snapshot(payload) if copy else payload


def write_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write a checkpoint payload (see `model_payload`) atomically."""
    return atomic_write(path, lambda f: torch.save(payload, f))


def snapshot(obj: object) -> object:
    """A copy of nested dicts, lists and tuples whose tensors are copied to the CPU (everything else shared)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict safely (weights only) and check it is one of ours."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = safe_torch_load(path, what="loadable checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a webdino-seg model checkpoint (expected format {FORMAT!r})")
    return ckpt


def load_model(
    path: str | Path, weights: str | None = None, backbone: DinoVisionTransformer | None = None
) -> tuple[SegmentationModel, dict]:
    """Rebuild the model a checkpoint describes; `weights` overrides where the backbone weights are.

    `backbone`, when given, is used as the frozen backbone instead of loading it again (training
    passes the one it already holds); it must be the variant the checkpoint names.
    """
    ckpt = read_checkpoint(path)
    ident = ckpt["backbone_identity"]
    cfg_fields = dict(ident["config"])
    cfg_fields["mean"], cfg_fields["std"] = tuple(cfg_fields["mean"]), tuple(cfg_fields["std"])
    cfg = BackboneConfig(**cfg_fields)
    if ckpt["backbone"] is not None:
        with torch.device("meta"):
            backbone = backbone_class(cfg)(cfg)
        backbone.load_state_dict(ckpt["backbone"], strict=True, assign=True)
    elif backbone is not None:
        if backbone.cfg != cfg:
            raise WeightsError(f"{path}: the given backbone is {backbone.cfg.name}, the checkpoint needs {cfg.name}")
    else:
        backbone = _frozen_backbone(path, cfg, ident, weights)
    head = create_head(ckpt["head_name"], backbone.embed_dim, len(ckpt["class_names"]))
    fit = head.load_state_dict(ckpt["head"], strict=False)  # shapes are still checked; keys are named below
    if fit.missing_keys or fit.unexpected_keys:  # e.g. a head whose design changed since the checkpoint was written
        missing, unexpected = sorted(fit.missing_keys), sorted(fit.unexpected_keys)
        raise WeightsError(
            f"{path}: its {ckpt['head_name']!r} head does not fit this version's (missing {', '.join(missing) or '-'}; "
            f"unexpected {', '.join(unexpected) or '-'}): it was written by another version of webdino-seg; train "
            "the head again (the features cache makes that quick)"
        )
    model = SegmentationModel(backbone, head, fine_tune=ckpt["fine_tune"]).eval()
    return model, ckpt


def _frozen_backbone(path: str | Path, cfg: BackboneConfig, ident: dict, weights: str | None) -> DinoVisionTransformer:
    """The frozen backbone a head-only checkpoint names, found again and verified (sha256 or fingerprint)."""
    source = weights or ident["weights"]
    if source == "random":
        backbone = build_backbone(cfg, None, ident["seed"])
        if abs(fingerprint(backbone) - ident["fingerprint"]) > 1e-6 * max(1.0, abs(ident["fingerprint"])):
            raise WeightsError(f"{path}: the random backbone (seed {ident['seed']}) could not be rebuilt identically")
        return backbone
    try:
        found = resolve_weights(source)
    except FileNotFoundError as err:
        hint = f" (official URL {cfg.url}, Hub id {cfg.hub_id})" if cfg.url else ""
        raise FileNotFoundError(
            f"{path}: needs the backbone weights {source} ({cfg.name}, sha256 {ident.get('sha256')}){hint}, "
            f"which are not available: {err}. Pass --weights PATH to point at a local copy."
        ) from None
    expected, actual = ident.get("sha256"), _weights_sha256(found)
    if expected and actual and expected != actual:  # checked before the weights are read into a model
        raise WeightsError(
            f"{path}: backbone weights {source} have sha256 {actual[:16]}..., but the model was trained on "
            f"{expected[:16]}..."
        )
    return build_backbone(cfg, str(found), ident["seed"])
