"""DINOv3 key conventions: the official state dict and Hugging Face's ``DINOv3ViTModel`` naming.

Conversions pop every key they map and fail on leftovers. What the HF format leaves out is restored
deterministically: the RoPE periods and key-bias masks (computed, not learned), the key third of the
qkv bias (zeros: the mask removes it anyway) and, for variants that have one, the training-only
``local_cls_norm`` (identity; it is never used at eval).
"""

from __future__ import annotations

import re

import torch

from ..dinov3 import DinoV3VisionTransformer
from ..variants import VARIANTS, BackboneConfig
from .errors import StateDict, WeightsError
from .families import Family, register

_TOP = {
    "cls_token": "embeddings.cls_token",
    "storage_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1.weight": "mlp.up_proj.weight",
    "mlp.fc1.bias": "mlp.up_proj.bias",
    "mlp.fc2.weight": "mlp.down_proj.weight",
    "mlp.fc2.bias": "mlp.down_proj.bias",
}
_GATED = {
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w1.bias": "mlp.gate_proj.bias",
    "mlp.w2.weight": "mlp.up_proj.weight",
    "mlp.w2.bias": "mlp.up_proj.bias",
    "mlp.w3.weight": "mlp.down_proj.weight",
    "mlp.w3.bias": "mlp.down_proj.bias",
}


def is_official(sd: StateDict) -> bool:
    """Official DINOv3 keys (storage tokens, RoPE periods)."""
    return "storage_tokens" in sd or "rope_embed.periods" in sd


def is_hf(sd: StateDict) -> bool:
    """Hugging Face DINOv3ViTModel keys (``layer.N.`` or transformers 5's ``model.layer.N.``)."""
    return "embeddings.patch_embeddings.weight" in sd and any(re.match(r"(model\.)?layer\.\d+\.", k) for k in sd)


def buffers(cfg: BackboneConfig) -> StateDict:
    """The non-learned buffers of a DINOv3 state dict: RoPE periods and the qkv key-bias masks."""
    head_dim = cfg.embed_dim // cfg.num_heads
    out = {"rope_embed.periods": cfg.rope_base ** (torch.arange(head_dim // 4, dtype=torch.float32) * 4 / head_dim)}
    if cfg.qkv_bias:
        mask = torch.ones(3 * cfg.embed_dim)
        mask[cfg.embed_dim : 2 * cfg.embed_dim] = 0
        for i in range(cfg.depth):
            out[f"blocks.{i}.attn.qkv.bias_mask"] = mask.clone()
    return out


def hf_to_official(sd: StateDict) -> StateDict:
    """HF DINOv3 naming to the official one (the buffers are added by `complete`)."""
    sd = {re.sub(r"^model\.layer\.", "layer.", k): v for k, v in sd.items()}
    out: StateDict = {}
    for official, hf in _TOP.items():
        if hf in sd:
            out[official] = sd.pop(hf)
    if "embeddings.mask_token" in sd:
        out["mask_token"] = sd.pop("embeddings.mask_token").reshape(1, -1)
    blocks = sorted({int(m[1]) for k in sd if (m := re.match(r"layer\.(\d+)\.", k))})
    for i in blocks:
        pre = f"layer.{i}."
        gated = f"{pre}mlp.gate_proj.weight" in sd
        for official, hf in (_BLOCK | _GATED if gated else _BLOCK).items():
            if gated and official.startswith("mlp.fc"):
                continue
            if pre + hf in sd:
                out[f"blocks.{i}.{official}"] = sd.pop(pre + hf)
        q, k, v = (sd.pop(f"{pre}attention.{n}_proj.weight", None) for n in "qkv")
        if q is None or k is None or v is None:
            raise WeightsError(f"layer {i}: q_proj, k_proj and v_proj weights are all needed")
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, k, v])
        qb, kb, vb = (sd.pop(f"{pre}attention.{n}_proj.bias", None) for n in "qkv")
        if qb is not None and vb is not None:
            out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([qb, torch.zeros_like(qb) if kb is None else kb, vb])
    if sd:
        raise WeightsError(f"{len(sd)} Hugging Face key(s) have no official DINOv3 equivalent: {sorted(sd)[:5]}")
    return out


def complete(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    """Add what the HF format leaves out, as the variant has it: the buffers, and an identity local_cls_norm."""
    sd = dict(sd)
    for key, value in buffers(cfg).items():
        sd.setdefault(key, value)
    if cfg.local_cls_norm and "local_cls_norm.weight" not in sd:
        sd["local_cls_norm.weight"] = torch.ones(cfg.embed_dim)
        sd["local_cls_norm.bias"] = torch.zeros(cfg.embed_dim)
    return sd


def official_to_hf(sd: StateDict) -> StateDict:
    """Official DINOv3 keys to HF's hub naming (``layer.N.``), as transformers' conversion script does."""
    sd = dict(sd)
    for key in [
        k for k in sd if k.endswith(".bias_mask") or k == "rope_embed.periods" or k.startswith("local_cls_norm.")
    ]:
        sd.pop(key)
    out: StateDict = {}
    for official, hf in _TOP.items():
        if official in sd:
            out[hf] = sd.pop(official)
    if "mask_token" in sd:
        out["embeddings.mask_token"] = sd.pop("mask_token").reshape(1, 1, -1)
    blocks = sorted({int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    for i in blocks:
        pre, hf_pre = f"blocks.{i}.", f"layer.{i}."
        gated = f"{pre}mlp.w1.weight" in sd
        for official, hf in (_BLOCK | _GATED if gated else _BLOCK).items():
            if pre + official in sd:
                out[hf_pre + hf] = sd.pop(pre + official)
        for name, part in zip("qkv", sd.pop(f"{pre}attn.qkv.weight").chunk(3), strict=True):
            out[f"{hf_pre}attention.{name}_proj.weight"] = part.contiguous()
        bias = sd.pop(f"{pre}attn.qkv.bias", None)
        if bias is not None:  # the key bias is masked out: HF drops it
            q, _, v = bias.chunk(3)
            out[f"{hf_pre}attention.q_proj.bias"], out[f"{hf_pre}attention.v_proj.bias"] = (
                q.contiguous(),
                v.contiguous(),
            )
    if sd:
        raise WeightsError(f"{len(sd)} official DINOv3 key(s) have no Hugging Face equivalent: {sorted(sd)[:5]}")
    return out


def hf_config(cfg: BackboneConfig) -> dict:
    """A ``config.json`` for transformers' ``DINOv3ViTModel`` matching `cfg`."""
    gated = cfg.ffn.startswith("swiglu")
    return {
        "architectures": ["DINOv3ViTModel"],
        "model_type": "dinov3_vit",
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "num_register_tokens": cfg.num_register_tokens,
        "patch_size": cfg.patch_size,
        "image_size": cfg.img_size,
        "num_channels": 3,
        "layer_norm_eps": cfg.layer_norm_eps,
        "layerscale_value": cfg.layerscale_init,
        "rope_theta": float(cfg.rope_base),
        "query_bias": cfg.qkv_bias,
        "key_bias": False,
        "value_bias": cfg.qkv_bias,
        "proj_bias": True,
        "mlp_bias": True,
        "use_gated_mlp": gated,
        "hidden_act": "silu" if gated else "gelu",
        "pos_embed_rescale": 2.0,
        "drop_path_rate": 0.0,
    }


def config_from_hf(config: dict, base: BackboneConfig) -> BackboneConfig:
    """Override `base` with the architecture a DINOv3 ``config.json`` describes."""
    gated = bool(config.get("use_gated_mlp"))
    hidden, dim = config["intermediate_size"], config["hidden_size"]
    if gated:
        ffn = "swiglu64" if hidden % 64 == 0 and base.ffn == "swiglu64" else "swiglu"
        ratio = hidden * 1.5 / dim
    else:
        ffn, ratio = "mlp", hidden / dim
    return base.replace(
        embed_dim=dim,
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_register_tokens=config.get("num_register_tokens", 4),
        ffn=ffn,
        mlp_ratio=ratio,
        patch_size=config.get("patch_size", 16),
        layer_norm_eps=config.get("layer_norm_eps", 1e-5),
        rope_base=float(config.get("rope_theta", 100.0)),
        qkv_bias=bool(config.get("query_bias", True)),
    )


def guess(sd: StateDict) -> list[str]:
    """Every DINOv3 variant whose shapes an official-named state dict has: width, depth, FFN kind and width,
    qkv bias, local norm."""
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


def _detect(sd: StateDict) -> str | None:
    """hf-dinov3 or official-dinov3 for this family's keys, else None."""
    if is_hf(sd):
        return "hf-dinov3"
    return "official-dinov3" if is_official(sd) else None


register(
    Family(
        name="dinov3",
        model=DinoV3VisionTransformer,
        detect=_detect,
        to_official=lambda sd, fmt: hf_to_official(sd) if fmt == "hf-dinov3" else dict(sd),
        owns=is_official,
        guess=guess,
        official_to_hf=official_to_hf,
        hf_config=hf_config,
        config_from_hf=config_from_hf,
        base_variant="dinov3-vits16",
        hf_keys=("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
        complete=complete,
        for_file=complete,
        describe_unlisted=lambda sd: "an unlisted DINOv3 model",
    )
)
