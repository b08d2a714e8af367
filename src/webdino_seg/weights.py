"""Checkpoint formats in and out: official ``.pth`` (chunked or not), Hugging Face, hub ids and URLs.

Every path through here ends in one strict check: the converted state dict must have exactly the
model's keys and shapes, or a `WeightsError` says what is wrong before anything is copied.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from . import weights_v3
from .download import download_url
from .io import atomic_write, atomic_write_text
from .variants import VARIANTS, BackboneConfig

WRAPPERS = ("model", "state_dict", "teacher", "module")
PREFIXES = ("module.", "backbone.", "_orig_mod.", "dinov2.")
DROPPED = ("dino_head", "ibot_head")

# Per-block renames official -> HF legacy (transformers 4.x on-disk names); qkv is split apart.
_BLOCK_COPY = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.proj.weight": "attention.output.dense.weight",
    "attn.proj.bias": "attention.output.dense.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.w12.weight": "mlp.weights_in.weight",
    "mlp.w12.bias": "mlp.weights_in.bias",
    "mlp.w3.weight": "mlp.weights_out.weight",
    "mlp.w3.bias": "mlp.weights_out.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}
_TOP_COPY = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_QKV = ("query", "key", "value")
# transformers 5 in-memory names -> 4.x names (concatenations handled separately)
_V5_RENAMES = {
    "attention.q_proj.": "attention.attention.query.",
    "attention.k_proj.": "attention.attention.key.",
    "attention.v_proj.": "attention.attention.value.",
    "attention.o_proj.": "attention.output.dense.",
    "mlp.down_proj.": "mlp.weights_out.",
}

StateDict = dict[str, torch.Tensor]


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded strictly into the requested backbone."""


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown} (and {len(keys) - n} more)" if len(keys) > n else shown


# ---------------------------------------------------------------------------------------------
# reading files


def read_state_dict(path: str | Path) -> StateDict:
    """Read tensors from a ``.pth``/``.pt``/``.bin`` pickle (weights only), a ``.safetensors`` file or an HF folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return read_state_dict(path / name)
        index = path / "model.safetensors.index.json"
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
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
                f"{source}: not a state dict: top-level keys {_few(sorted(map(str, obj)))} hold no tensors "
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


# ---------------------------------------------------------------------------------------------
# format detection and conversion (every conversion pops what it maps; leftovers are an error)


def detect_format(sd: StateDict) -> str:
    """Name the key convention: ``official-chunked``, ``official``, ``hf-v4``, ``hf-v5`` (DINOv2 family), or
    ``official-dinov3``, ``hf-dinov3``."""
    if weights_v3.is_hf_v3(sd):
        return "hf-dinov3"
    if weights_v3.is_official_v3(sd):
        return "official-dinov3"
    keys = list(sd)
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in keys):
        return "hf-v5" if any(".q_proj." in k or ".gate_proj." in k for k in keys) else "hf-v4"
    if any(re.match(r"blocks\.\d+\.\d+\.", k) for k in keys):
        return "official-chunked"
    return "official"


def to_official(sd: StateDict) -> tuple[StateDict, str]:
    """Convert any supported naming to the official un-chunked one; return it and the detected format."""
    fmt = detect_format(sd)
    sd = dict(sd)
    if fmt == "hf-dinov3":
        try:
            return weights_v3.hf_to_official(sd), fmt
        except weights_v3.KeysError as err:
            raise WeightsError(str(err)) from None
    if fmt == "official-dinov3":
        return sd, fmt
    if fmt == "hf-v5":
        sd = _v5_to_v4(sd)
    if fmt.startswith("hf"):
        sd = _hf_to_official(sd)
    elif fmt == "official-chunked":
        sd = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}
    return sd, fmt


def _v5_to_v4(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for key in list(sd):
        m = re.match(r"(encoder\.layer\.\d+\.mlp\.)gate_proj\.(weight|bias)$", key)
        if m:
            up = f"{m[1]}up_proj.{m[2]}"
            if up not in sd:
                raise WeightsError(f"hf-v5 checkpoint has {key} without its partner {up}")
            out[f"{m[1]}weights_in.{m[2]}"] = torch.cat([sd.pop(key), sd.pop(up)])
    for key, value in sd.items():
        for old, new in _V5_RENAMES.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def _hf_to_official(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for official, hf in _TOP_COPY.items():
        if hf in sd:
            out[official] = sd.pop(hf)
    blocks = sorted({int(m[1]) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in blocks:
        pre = f"encoder.layer.{i}."
        for official, hf in _BLOCK_COPY.items():
            if pre + hf in sd:
                out[f"blocks.{i}.{official}"] = sd.pop(pre + hf)
        for kind in ("weight", "bias"):
            parts = [f"{pre}attention.attention.{name}.{kind}" for name in _QKV]
            if all(p in sd for p in parts):
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd.pop(p) for p in parts])
    if sd:
        raise WeightsError(f"{len(sd)} Hugging Face key(s) have no official equivalent: {_few(sorted(sd))}")
    return out


def official_to_hf(sd: StateDict) -> StateDict:
    """Convert official un-chunked keys to Hugging Face transformers-4 naming (read by 4.x and 5.x)."""
    sd = dict(sd)
    out: StateDict = {}
    for official, hf in _TOP_COPY.items():
        if official in sd:
            out[hf] = sd.pop(official)
    blocks = sorted({int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    for i in blocks:
        pre, hf_pre = f"blocks.{i}.", f"encoder.layer.{i}."
        for official, hf in _BLOCK_COPY.items():
            if pre + official in sd:
                out[hf_pre + hf] = sd.pop(pre + official)
        for kind in ("weight", "bias"):
            if pre + f"attn.qkv.{kind}" in sd:
                for name, part in zip(_QKV, sd.pop(pre + f"attn.qkv.{kind}").chunk(3), strict=True):
                    out[f"{hf_pre}attention.attention.{name}.{kind}"] = part.contiguous()
    if sd:
        raise WeightsError(f"{len(sd)} official key(s) have no Hugging Face equivalent: {_few(sorted(sd))}")
    return out


def chunk_keys(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    """Rename ``blocks.I.`` to the official chunked ``blocks.C.I.`` the variant's factory uses."""
    if not cfg.block_chunks:
        return dict(sd)
    per_chunk = cfg.depth // cfg.block_chunks
    return {
        re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m[1]) // per_chunk}.{m[1]}.", k): v for k, v in sd.items()
    }


def hf_config(cfg: BackboneConfig) -> dict:
    """A ``config.json`` for transformers' ``Dinov2Model`` (or ``Dinov2WithRegistersModel``) matching `cfg`."""
    config = {
        "architectures": ["Dinov2WithRegistersModel" if cfg.num_register_tokens else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if cfg.num_register_tokens else "dinov2",
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        # transformers 5 validates types strictly: mlp_ratio is an int there (4, not 4.0)
        "mlp_ratio": int(cfg.mlp_ratio) if float(cfg.mlp_ratio).is_integer() else cfg.mlp_ratio,
        "use_swiglu_ffn": cfg.ffn == "swiglu",
        "hidden_act": "gelu",
        "layerscale_value": cfg.layerscale_init,
        "patch_size": cfg.patch_size,
        "image_size": cfg.img_size,
        "num_channels": 3,
        "qkv_bias": True,
        "layer_norm_eps": cfg.layer_norm_eps,
        "drop_path_rate": 0.0,
        "use_mask_token": True,
    }
    if cfg.num_register_tokens:
        config["num_register_tokens"] = cfg.num_register_tokens
    return config


def config_from_hf(config: dict, base: BackboneConfig) -> BackboneConfig:
    """Override `base` with the architecture a Hugging Face ``config.json`` describes."""
    return base.replace(
        embed_dim=config["hidden_size"],
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_ratio=float(config.get("mlp_ratio", 4)),
        ffn="swiglu" if config.get("use_swiglu_ffn") else "mlp",
        img_size=config.get("image_size", base.img_size),
        patch_size=config.get("patch_size", base.patch_size),
        num_register_tokens=config.get("num_register_tokens", 0),
        layer_norm_eps=config.get("layer_norm_eps", base.layer_norm_eps),
    )


ARCHITECTURE_FIELDS = (
    "embed_dim",
    "depth",
    "num_heads",
    "ffn",
    "mlp_ratio",
    "patch_size",
    "img_size",
    "num_register_tokens",
    "interpolate_offset",
    "interpolate_antialias",
    "layer_norm_eps",
)


def _guess_v3(sd: StateDict) -> list[str]:
    dim = sd["cls_token"].shape[-1] if "cls_token" in sd else None
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    gated = any(".mlp.w1." in k for k in sd)
    hidden = next((v.shape[0] for k, v in sd.items() if k.endswith((".mlp.fc1.weight", ".mlp.w1.weight"))), None)
    shape = (dim, depth, gated, hidden, "blocks.0.attn.qkv.bias" in sd, "local_cls_norm.weight" in sd)
    return [
        cfg.name
        for cfg in VARIANTS.values()
        if cfg.family == "dinov3"
        and (cfg.embed_dim, cfg.depth, cfg.ffn.startswith("swiglu"), cfg.ffn_hidden, cfg.qkv_bias, cfg.local_cls_norm)
        == shape
    ]


def guess_variants(sd: StateDict) -> list[str]:
    """Every variant whose shapes an official-named state dict has: width, depth, position grid, FFN kind
    and register tokens (DINOv3: width, depth, FFN kind and width, qkv bias, local norm)."""
    if weights_v3.is_official_v3(sd):
        return _guess_v3(sd)
    pos = sd.get("pos_embed")
    if pos is None:
        return []
    dim = pos.shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    grid_tokens = pos.shape[1] - 1
    ffn = "swiglu" if any(".mlp.w12." in k for k in sd) else "mlp"
    registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    patch = sd["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in sd else None
    return [
        cfg.name
        for cfg in VARIANTS.values()
        if (cfg.embed_dim, cfg.depth, cfg.grid**2, cfg.ffn, cfg.num_register_tokens)
        == (dim, depth, grid_tokens, ffn, registers)
        and patch in (None, cfg.patch_size)
    ]


def guess_variant(sd: StateDict) -> str | None:
    """Name the variant whose shapes an official-named state dict has, if any (the first of equals)."""
    names = guess_variants(sd)
    if names:
        return names[0]
    if weights_v3.is_official_v3(sd):
        return "an unlisted DINOv3 model"
    pos = sd.get("pos_embed")
    if pos is None:
        return None
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    ffn = "swiglu" if any(".mlp.w12." in k for k in sd) else "mlp"
    registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    return (f"an unlisted model (embed_dim {pos.shape[-1]}, depth {depth}, {pos.shape[1] - 1} position tokens, "
            f"{ffn} FFN, {registers} register tokens)")  # fmt: skip


def variant_from_keys(sd: StateDict, source: str) -> BackboneConfig:
    """The one architecture a state dict's keys and shapes allow; several that differ (e.g. in heads) or none
    is a `WeightsError` that asks for --arch."""
    names = guess_variants(sd)
    if not names:
        raise WeightsError(f"{source}: cannot tell which variant this is ({guess_variant(sd)}); pass --arch")
    shapes = {tuple(getattr(VARIANTS[n], f) for f in ARCHITECTURE_FIELDS) for n in names}
    if len(shapes) > 1:
        raise WeightsError(
            f"{source}: the keys fit several architectures ({', '.join(names)}) that differ in what the file cannot "
            "show (e.g. attention heads); pass --arch"
        )
    return VARIANTS[names[0]]


# ---------------------------------------------------------------------------------------------
# sources and strict loading


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


def check_state_dict(model: nn.Module, sd: StateDict, fmt: str, source: str) -> None:
    """Raise a `WeightsError` unless `sd` has exactly `model`'s keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if not (missing or unexpected or wrong):
        return
    lines = [f"{source}: cannot load {fmt} checkpoint strictly into {getattr(model, 'cfg', None) and model.cfg.name}:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if wrong:
        lines.append(f"  {len(wrong)} shape mismatch(es) (file vs model): {_few(wrong, 3)}")
    if wrong or missing:
        guess = guess_variant(sd)
        if guess:
            lines.append(f"  the file looks like {guess}")
    raise WeightsError("\n".join(lines))


def check_finite(sd: StateDict, source: str) -> None:
    """Raise a `WeightsError` naming the tensors that hold NaN or infinite values."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(
            f"{source}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. {_few(bad, 3)}; the file is damaged "
            "or was saved from a diverged run: get the weights again"
        )


def load_backbone_weights(model: nn.Module, source: str | Path) -> dict:
    """Load weights from any supported source into `model` strictly; return what was loaded from where."""
    path = resolve_weights(source)
    sd, fmt = to_official(read_state_dict(path))
    if getattr(getattr(model, "cfg", None), "family", "") == "dinov3":
        sd = weights_v3.complete(sd, model.cfg, set(model.state_dict()))
    if all(v.is_floating_point() for v in sd.values()):
        ref = next(iter(model.parameters()))
        sd = {k: v.to(ref.dtype) for k, v in sd.items()}
    check_state_dict(model, sd, fmt, str(path))
    check_finite(sd, str(path))
    model.load_state_dict(sd, strict=True, assign=any(p.is_meta for p in model.parameters()))
    return {"source": str(source), "path": str(path), "format": fmt}


def convert_weights(src: str | Path, dst: str | Path, to: str, cfg: BackboneConfig | None = None) -> str:
    """Convert a checkpoint between official ``.pth`` (chunked as the variant's factory) and an HF folder.

    `cfg` supplies head count and chunking; when absent it is taken from an HF ``config.json`` or
    guessed from the tensor shapes. Returns the detected input format.
    """

    src_path = resolve_weights(src)
    sd, fmt = to_official(read_state_dict(src_path))
    v3 = fmt.endswith("dinov3")
    if cfg is None:
        hf_json = src_path / "config.json" if src_path.is_dir() else src_path.with_name("config.json")
        if hf_json.exists() and fmt.startswith("hf"):
            base = VARIANTS.get(guess_variant(sd) or "") or VARIANTS["dinov3-vits16" if v3 else "webdino-300m"]
            from_hf = weights_v3.config_from_hf if v3 else config_from_hf
            cfg = from_hf(json.loads(hf_json.read_text()), base)
        else:
            cfg = variant_from_keys(sd, str(src_path))
    if (cfg.family == "dinov3") != v3:
        raise WeightsError(f"{src_path}: a {fmt} checkpoint cannot be written as {cfg.name} ({cfg.family})")
    dst = Path(dst)
    if to == "official":
        if v3:
            from .factory import backbone_class

            with torch.device("meta"):
                expected = set(backbone_class(cfg)(cfg).state_dict())
            sd = weights_v3.complete(sd, cfg, expected)
        atomic_write(dst, lambda f: torch.save(sd if v3 else chunk_keys(sd, cfg), f))
    elif to == "hf":
        from safetensors.torch import save

        dst.mkdir(parents=True, exist_ok=True)
        hf_sd = weights_v3.official_to_hf(sd) if v3 else official_to_hf(sd)
        blob = save({k: v.contiguous() for k, v in hf_sd.items()}, metadata={"format": "pt"})
        atomic_write(dst / "model.safetensors", lambda f: f.write(blob))
        text = json.dumps(weights_v3.hf_config(cfg) if v3 else hf_config(cfg), indent=2) + "\n"
        atomic_write_text(dst / "config.json", text)
    else:
        raise ValueError(f"unknown target format {to!r}; use 'hf' or 'official'")
    return fmt
