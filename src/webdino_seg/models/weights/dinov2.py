"""DINOv2-family (Web-DINO, DINOv2) key conventions: the official state dict (chunked or not) and Hugging
Face's ``Dinov2Model`` naming in transformers 4 (on disk) and 5 (in memory).

Conversions pop every key they map and fail on leftovers.
"""

from __future__ import annotations

import re

import torch

from ..dinov2 import DinoVisionTransformer
from ..variants import VARIANTS, BackboneConfig
from .errors import StateDict, WeightsError, few
from .families import Family, register

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


def is_hf(sd: StateDict) -> bool:
    """Hugging Face ``Dinov2Model`` keys, transformers 4 or 5."""
    return any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd)


def hf_version(sd: StateDict) -> str:
    """``hf-v5`` for transformers 5's in-memory names (q_proj, gate_proj), else ``hf-v4``."""
    return "hf-v5" if any(".q_proj." in k or ".gate_proj." in k for k in sd) else "hf-v4"


def is_chunked(sd: StateDict) -> bool:
    """Official keys with block chunks (``blocks.C.I.``), as the Web-SSL release stores them."""
    return any(re.match(r"blocks\.\d+\.\d+\.", k) for k in sd)


def unchunk(sd: StateDict) -> StateDict:
    """``blocks.C.I.`` to ``blocks.I.``."""
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}


def v5_to_v4(sd: StateDict) -> StateDict:
    """transformers 5's in-memory names to the 4.x names (gate and up projections concatenated)."""
    sd = dict(sd)
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


def hf_to_official(sd: StateDict) -> StateDict:
    """Hugging Face (transformers 4) names to the official un-chunked ones."""
    sd = dict(sd)
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
        raise WeightsError(f"{len(sd)} Hugging Face key(s) have no official equivalent: {few(sorted(sd))}")
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
        raise WeightsError(f"{len(sd)} official key(s) have no Hugging Face equivalent: {few(sorted(sd))}")
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


def _shapes(sd: StateDict) -> tuple[int, int, str, int] | None:
    """(width, depth, FFN kind, register tokens) of an official-named state dict; None without a pos_embed."""
    pos = sd.get("pos_embed")
    if pos is None:
        return None
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    ffn = "swiglu" if any(".mlp.w12." in k for k in sd) else "mlp"
    registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    return pos.shape[-1], depth, ffn, registers


def guess(sd: StateDict) -> list[str]:
    """Every DINOv2-family variant whose shapes an official-named state dict has: width, depth, position
    grid, FFN kind and register tokens."""
    shapes = _shapes(sd)
    if shapes is None:
        return []
    grid_tokens = sd["pos_embed"].shape[1] - 1
    patch = sd["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in sd else None
    dim, depth, ffn, registers = shapes
    return [
        cfg.name
        for cfg in VARIANTS.values()
        if (cfg.embed_dim, cfg.depth, cfg.grid**2, cfg.ffn, cfg.num_register_tokens)
        == (dim, depth, grid_tokens, ffn, registers)
        and patch in (None, cfg.patch_size)
    ]


def describe_unlisted(sd: StateDict) -> str | None:
    """What an official-named state dict that fits no listed variant looks like (None without a pos_embed)."""
    shapes = _shapes(sd)
    if shapes is None:
        return None
    dim, depth, ffn, registers = shapes
    return (
        f"an unlisted model (embed_dim {dim}, depth {depth}, {sd['pos_embed'].shape[1] - 1} position tokens, "
        f"{ffn} FFN, {registers} register tokens)"
    )


def _detect(sd: StateDict) -> str:
    """hf-v4 / hf-v5 for Hugging Face keys, else official-chunked or official (the family of plain keys)."""
    if is_hf(sd):
        return hf_version(sd)
    return "official-chunked" if is_chunked(sd) else "official"


def _to_official(sd: StateDict, fmt: str) -> StateDict:
    """A state dict of format `fmt` with the official un-chunked keys."""
    if fmt == "hf-v5":
        sd = v5_to_v4(sd)
    if fmt.startswith("hf"):
        return hf_to_official(sd)
    return unchunk(sd) if fmt == "official-chunked" else dict(sd)


register(
    Family(
        name="dinov2",
        model=DinoVisionTransformer,
        detect=_detect,
        to_official=_to_official,
        owns=lambda sd: True,
        guess=guess,
        official_to_hf=official_to_hf,
        hf_config=hf_config,
        config_from_hf=config_from_hf,
        base_variant="webdino-300m",
        for_file=chunk_keys,
        describe_unlisted=describe_unlisted,
        fallback=True,
    )
)
