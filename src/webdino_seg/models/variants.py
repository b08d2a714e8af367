"""The table of backbone variants: one frozen config per name, looked up by `get_variant`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..utils.safetext import cut

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_WEBSSL_URL = "https://dl.fbaipublicfiles.com/webssl/{stem}.pth"
_DINOV3_URL = "https://dl.fbaipublicfiles.com/dinov3/dinov3_{arch}/dinov3_{arch}_pretrain_{data}-{hash}.pth"
SAT_MEAN = (0.430, 0.411, 0.296)  # DINOv3's satellite (SAT-493M) weights
SAT_STD = (0.213, 0.156, 0.143)
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{arch}{reg}_pretrain.pth"


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to build a DINOv2- or DINOv3-family ViT and find its official weights."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "swiglu"  # "swiglu" (Web-DINO, DINOv2 ViT-g) or "mlp" (GELU MLP)
    mlp_ratio: float = 4.0
    patch_size: int = 14
    img_size: int = 224  # the resolution the positional embedding was trained at
    num_register_tokens: int = 0
    layerscale_init: float = 1e-5
    block_chunks: int = 4  # how the official .pth names its blocks (0: blocks.I.*)
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    layer_norm_eps: float = 1e-6
    url: str | None = None
    hub_id: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    family: str = "dinov2"  # "dinov2" (Web-DINO, DINOv2: learned positions) or "dinov3" (RoPE, storage tokens)
    qkv_bias: bool = True
    rope_base: float = 100.0  # DINOv3 only
    local_cls_norm: bool = False  # DINOv3 only: a training-only norm some checkpoints carry

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the feed-forward layer, exactly as the official code computes it."""
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn.startswith("swiglu"):
            align = 64 if self.ffn == "swiglu64" else 8
            return (int(hidden * 2 / 3) + align - 1) // align * align
        return hidden

    @property
    def grid(self) -> int:
        """Side of the stored positional-embedding grid in patches."""
        return self.img_size // self.patch_size

    def replace(self, **overrides: object) -> BackboneConfig:
        """Return a copy with some fields replaced; unknown fields raise a clear error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown backbone option(s) {unknown}; valid options: {sorted(names)}")
        return dataclasses.replace(self, **overrides)


def _webdino(size: str, data: str, res: int, dim: int, depth: int, heads: int) -> BackboneConfig:
    stem = f"webssl_dino{size}_{data}_{res}"
    suffix = "" if (data, res) in {("full2b", 224), ("full8b", 224)} else f"-{data[:-2]}" if res == 224 else f"-{res}"
    return BackboneConfig(
        name=f"webdino-{size}{suffix}",
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        img_size=res,
        url=_WEBSSL_URL.format(stem=stem),
        hub_id=f"facebook/{stem.replace('_', '-')}",
    )


def _dinov2(arch: str, hf: str, dim: int, depth: int, heads: int, ffn: str, reg: bool) -> BackboneConfig:
    return BackboneConfig(
        name=f"dinov2-{arch}" + ("-reg" if reg else ""),
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        ffn=ffn,
        img_size=518,
        num_register_tokens=4 if reg else 0,
        layerscale_init=1.0,
        block_chunks=0,
        # the official hub builds register models with antialiased, offset-free interpolation
        interpolate_offset=0.0 if reg else 0.1,
        interpolate_antialias=reg,
        url=_DINOV2_URL.format(arch=f"dinov2_{arch}", reg="_reg4" if reg else ""),
        hub_id=f"facebook/dinov2-with-registers-{hf}" if reg else f"facebook/dinov2-{hf}",
    )


def _dinov3(
    arch: str, dim: int, depth: int, heads: int, ffn: str, ratio: float, data: str, hash8: str, **extra: object
) -> BackboneConfig:
    sat = data == "sat493m"
    return BackboneConfig(
        name=f"dinov3-{arch}" + ("-sat" if sat else ""),
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        ffn=ffn,
        mlp_ratio=ratio,
        patch_size=16,
        img_size=224,
        num_register_tokens=4,
        layerscale_init=1e-5,
        block_chunks=0,
        interpolate_offset=0.0,
        layer_norm_eps=1e-5,
        url=_DINOV3_URL.format(arch=arch, data=data, hash=hash8),
        hub_id=f"facebook/dinov3-{arch}-pretrain-{data}",
        mean=SAT_MEAN if sat else IMAGENET_MEAN,
        std=SAT_STD if sat else IMAGENET_STD,
        family="dinov3",
        **extra,
    )


_TABLE: list[BackboneConfig] = [
    _webdino("300m", "full2b", 224, 1024, 24, 16),
    _webdino("1b", "full2b", 224, 1536, 40, 24),
    _webdino("2b", "full2b", 224, 2688, 24, 21),
    _webdino("3b", "full2b", 224, 3072, 26, 24),
    _webdino("5b", "full2b", 224, 3584, 32, 28),
    _webdino("7b", "full8b", 224, 4096, 32, 32),
    _webdino("7b", "full8b", 378, 4096, 32, 32),
    _webdino("7b", "full8b", 518, 4096, 32, 32),
    _webdino("2b", "light2b", 224, 2688, 24, 21),
    _webdino("2b", "heavy2b", 224, 2688, 24, 21),
    _webdino("3b", "light2b", 224, 3072, 26, 24),
    _webdino("3b", "heavy2b", 224, 3072, 26, 24),
    *[
        _dinov2(arch, hf, dim, depth, heads, ffn, reg)
        for arch, hf, dim, depth, heads, ffn in [
            ("vits14", "small", 384, 12, 6, "mlp"),
            ("vitb14", "base", 768, 12, 12, "mlp"),
            ("vitl14", "large", 1024, 24, 16, "mlp"),
            ("vitg14", "giant", 1536, 40, 24, "swiglu"),
        ]
        for reg in (False, True)
    ],
    # DINOv3 (weights by request under Meta's DINOv3 licence; see the README)
    _dinov3("vits16", 384, 12, 6, "mlp", 4, "lvd1689m", "08c60483"),
    _dinov3("vits16plus", 384, 12, 6, "swiglu", 6, "lvd1689m", "4057cbaa"),
    _dinov3("vitb16", 768, 12, 12, "mlp", 4, "lvd1689m", "73cec8be"),
    _dinov3("vitl16", 1024, 24, 16, "mlp", 4, "lvd1689m", "8aa4cbdd"),
    _dinov3("vitl16plus", 1024, 24, 16, "swiglu", 6, "lvd1689m", "46503df0"),
    _dinov3("vith16plus", 1280, 32, 20, "swiglu", 6, "lvd1689m", "7c1da9a5"),
    _dinov3("vit7b16", 4096, 40, 32, "swiglu64", 3, "lvd1689m", "a955f4ea", qkv_bias=False, local_cls_norm=True),
    _dinov3("vitl16", 1024, 24, 16, "mlp", 4, "sat493m", "eadcf0ff", local_cls_norm=True),
    _dinov3("vit7b16", 4096, 40, 32, "swiglu64", 3, "sat493m", "a6675841", qkv_bias=False, local_cls_norm=True),
    # A few-hundred-kilobyte model of the Web-DINO family for smoke tests; it has no weights.
    BackboneConfig(name="webdino-tiny", embed_dim=64, depth=4, num_heads=4),
    # ... and one of the DINOv3 family (ViT-S/16 options at width 64, 4 blocks), also without weights.
    _dinov3("vits16", 64, 4, 4, "mlp", 4, "lvd1689m", "08c60483").replace(name="dinov3-tiny", url=None, hub_id=None),
]

VARIANTS: dict[str, BackboneConfig] = {cfg.name: cfg for cfg in _TABLE}


def get_variant(name: str) -> BackboneConfig:
    """Look up a variant by name, e.g. ``webdino-300m`` or ``dinov2-vitl14-reg``."""
    try:
        return VARIANTS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(VARIANTS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(
            f"unknown backbone {cut(name)}; {hint}choose one of: {', '.join(VARIANTS)} (`webdino-seg info --list`)"
        ) from None


def list_variants(family: str | None = None) -> list[str]:
    """Variant names, in table order; `family` (``dinov2``, which holds Web-DINO, or ``dinov3``) keeps one family."""
    return [name for name, cfg in VARIANTS.items() if family is None or cfg.family == family]
