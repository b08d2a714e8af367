"""The DINOv3 vision transformer, numerically equal to Meta's official code at eval time.

What differs from DINOv2 (`dinov2.py`; the patch embedding, MLP and layer scale of `layers.py` are shared):
rotary position embeddings on the patch tokens only (coordinates normalised per axis, half-split
rotation, no rescaling at eval), storage tokens after the class token, a query/key/value bias whose
key third is masked out, LayerNorm eps 1e-5, a SwiGLU with separate w1/w2/w3 (hidden width aligned
to 8 or 64), and patch size 16. Parameter names follow the official state dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerScale, Mlp, PatchEmbed, check_image_size, split_layers, wanted_layers
from .variants import BackboneConfig


class RopePositionEmbedding(nn.Module):
    """sin/cos tables for a H x W patch grid: coordinates (i + 0.5) / H and (j + 0.5) / W mapped to
    [-1, 1], angles 2*pi*coord/period, [h-angles | w-angles] tiled twice to the head dimension."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"head dim {head_dim} must be a multiple of 4 for 2-D rotary embeddings")
        self.head_dim, self.base = head_dim, base
        self.register_buffer("periods", torch.empty(head_dim // 4), persistent=True)
        self.reset_periods()

    @torch.no_grad()
    def reset_periods(self) -> None:
        """periods[j] = base ** (4j / head_dim)."""
        if self.periods.is_meta:
            return
        exponents = torch.arange(self.head_dim // 4, dtype=torch.float32) * 4 / self.head_dim
        self.periods.copy_(self.base**exponents)

    def forward(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.periods.device
        coords_h = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        coords_w = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)  # [HW, 2]
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # [HW, 2, hd/4]
        angles = angles.flatten(1, 2).tile(2)  # [HW, hd]
        return torch.sin(angles), torch.cos(angles)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the last `len(sin)` tokens of (B, heads, N, hd); the prefix tokens stay as they are."""
    prefix = x.shape[-2] - sin.shape[0]
    patches = x[..., prefix:, :]
    rotated = patches * cos.to(x.dtype) + _rotate_half(patches) * sin.to(x.dtype)
    return torch.cat((x[..., :prefix, :], rotated), dim=-2)


class MaskedBiasAttention(nn.Module):
    """Self-attention with a fused qkv projection whose bias is multiplied by ``bias_mask`` (1 for
    query and value, 0 for key), rotary embeddings on the patch tokens, run through SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if qkv_bias:
            self.qkv.register_buffer("bias_mask", torch.empty(3 * dim), persistent=True)
        self.proj = nn.Linear(dim, dim)

    @torch.no_grad()
    def reset_bias_mask(self) -> None:
        """1 for the query and value thirds of the bias, 0 for the key third."""
        mask = getattr(self.qkv, "bias_mask", None)
        if mask is not None and not mask.is_meta:
            dim = mask.numel() // 3
            mask.fill_(1.0)
            mask[dim : 2 * dim] = 0.0

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, c = x.shape
        bias = self.qkv.bias * self.qkv.bias_mask if self.qkv.bias is not None else None
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SwiGLU3(nn.Module):
    """DINOv3's SwiGLU: w3(silu(w1 x) * w2 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class BlockV3(nn.Module):
    """Pre-norm transformer block with rotary attention and layer scale."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = MaskedBiasAttention(dim, cfg.num_heads, cfg.qkv_bias)
        self.ls1 = LayerScale(dim, cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = SwiGLU3(dim, cfg.ffn_hidden) if cfg.ffn.startswith("swiglu") else Mlp(dim, cfg.ffn_hidden)
        self.ls2 = LayerScale(dim, cfg.layerscale_init)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV3VisionTransformer(nn.Module):
    """DINOv3 ViT with the official API: `forward_features` (with masks) and `get_intermediate_layers`."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.embed_dim % cfg.num_heads:
            raise ValueError(f"embed_dim {cfg.embed_dim} is not divisible by num_heads {cfg.num_heads}")
        self.cfg = cfg
        self.embed_dim = dim = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.num_register_tokens = self.n_storage_tokens = cfg.num_register_tokens
        self.weights_info: dict | None = None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.rope_embed = RopePositionEmbedding(dim // cfg.num_heads, cfg.rope_base)
        self.blocks = nn.ModuleList(BlockV3(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        if cfg.local_cls_norm:  # used only in training, for local crops; kept so official files load strictly
            self.local_cls_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation in the official code's manner, and the buffers (RoPE periods, bias masks)."""
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.storage_tokens, std=0.02)
        nn.init.zeros_(self.mask_token)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm | nn.Conv2d):
                m.reset_parameters()
            elif isinstance(m, LayerScale):
                m.gamma.fill_(self.cfg.layerscale_init)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """The non-learned buffers: RoPE periods and the key-bias masks (also after loading a file without them)."""
        self.rope_embed.reset_periods()
        for blk in self.blocks:
            blk.attn.reset_bias_mask()

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
        """Patch-embed (masked patches replaced by the mask token), then prepend class and storage tokens."""
        _, _, height, width = x.shape
        check_image_size(height, width, self.patch_size)
        tokens = self.patch_embed(x)
        if masks is not None:
            tokens = torch.where(masks[..., None], self.mask_token.to(tokens.dtype)[None], tokens)
            cls = self.cls_token
        else:
            cls = self.cls_token + 0 * self.mask_token  # as the official code: the mask token stays in the graph
        b = tokens.shape[0]
        prefix = [cls.expand(b, -1, -1).to(tokens.dtype), self.storage_tokens.expand(b, -1, -1).to(tokens.dtype)]
        return torch.cat([*prefix, tokens], dim=1), height // self.patch_size, width // self.patch_size

    def _blocks(self, x: torch.Tensor, masks: torch.Tensor | None, wanted: set[int] | None = None):
        tokens, h, w = self.prepare_tokens(x, masks)
        rope = self.rope_embed(h, w)
        outputs = []
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, rope)
            if wanted is not None and i in wanted:
                outputs.append(tokens)
        return tokens, outputs

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """Run all blocks; return normed class, storage and patch tokens, the pre-norm sequence and the masks."""
        tokens, _ = self._blocks(x, masks)
        normed = self.norm(tokens)
        r = self.n_storage_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_storage_tokens": normed[:, 1 : r + 1],
            "x_norm_regtokens": normed[:, 1 : r + 1],  # the DINOv2 name, for code written against both
            "x_norm_patchtokens": normed[:, r + 1 :],
            "x_prenorm": tokens,
            "masks": masks,
        }

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        *,  # keyword-only past the image, as in the official DINOv3 code
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last `n` blocks (or of the block indices in `n`), as in the official API."""
        wanted = wanted_layers(n, len(self.blocks))
        _, collected = self._blocks(x, None, wanted)
        prefix, final_norm = 1 + self.n_storage_tokens, self.norm if norm else None
        outputs, class_tokens, extra_tokens = split_layers(
            collected,
            wanted,
            len(self.blocks),
            image=x,
            patch_size=self.patch_size,
            prefix=prefix,
            norm=final_norm,
            reshape=reshape,
        )
        if return_class_token and return_extra_tokens:
            return tuple(zip(outputs, class_tokens, extra_tokens, strict=True))
        if return_class_token:
            return tuple(zip(outputs, class_tokens, strict=True))
        if return_extra_tokens:
            return tuple(zip(outputs, extra_tokens, strict=True))
        return tuple(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normed class token, like the official model with an identity head."""
        return self.forward_features(x)["x_norm_clstoken"]
