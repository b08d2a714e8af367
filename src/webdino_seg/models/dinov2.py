"""The Web-DINO / DINOv2 vision transformer, numerically equal to the official Web-SSL code.

The module knows nothing about checkpoint formats (see `models/weights/`). Parameter names
follow the official un-chunked naming (``blocks.I.*``), so an official state dict loads after a
pure rename.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerScale, Mlp, PatchEmbed, check_image_size, split_layers, wanted_layers
from .variants import BackboneConfig


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, run through SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SwiGLUFFN(nn.Module):
    """out = w3(silu(x1) * x2) where (x1, x2) = w12(x) split in halves."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Block(nn.Module):
    """Pre-norm transformer block with layer scale."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(dim, cfg.num_heads)
        self.ls1 = LayerScale(dim, cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        ffn = SwiGLUFFN if cfg.ffn == "swiglu" else Mlp
        self.mlp = ffn(dim, cfg.ffn_hidden)
        self.ls2 = LayerScale(dim, cfg.layerscale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """DINOv2-family ViT with the official API: `forward_features`, `get_intermediate_layers`."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.embed_dim % cfg.num_heads:
            raise ValueError(f"embed_dim {cfg.embed_dim} is not divisible by num_heads {cfg.num_heads}")
        if cfg.ffn not in ("swiglu", "mlp"):
            raise ValueError(f"unknown ffn {cfg.ffn!r}; use 'swiglu' or 'mlp'")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.num_register_tokens = cfg.num_register_tokens
        self.weights_info: dict | None = None  # set when weights are loaded: source, path, format
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid**2 + 1, dim))
        if cfg.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every parameter (e.g. after ``to_empty``) exactly as construction would, then `init_weights`."""
        for token in (self.cls_token, self.pos_embed, self.mask_token):
            token.zero_()
        for m in self.modules():  # construction order, so the random stream matches building on a real device
            if isinstance(m, LayerScale):
                m.gamma.fill_(self.cfg.layerscale_init)
            elif isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)):
                m.reset_parameters()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random initialisation as in the official code (truncated normal, std 0.02)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.num_register_tokens:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """Positional embedding for an input of this size, resized exactly as the official code.

        Without gradients (a frozen backbone) the result is kept per size and dtype until the
        embedding changes, so inference does not redo the bicubic resize every batch.
        """
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()  # export, compile: compute in the graph
        if tracing or (torch.is_grad_enabled() and self.pos_embed.requires_grad):
            return self._interpolate_pos_encoding(height, width, dtype)
        key = (height, width, dtype, self.pos_embed.device, self.pos_embed.data_ptr(), self.pos_embed._version)
        cache = self.__dict__.setdefault("_pos_cache", {})
        if key not in cache:
            cache.clear()  # one size at a time is the common case; never grows without bound
            with torch.no_grad():
                cache[key] = self._interpolate_pos_encoding(height, width, dtype)
        return cache[key]

    def _interpolate_pos_encoding(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        h0, w0 = height // self.patch_size, width // self.patch_size
        n_stored = self.pos_embed.shape[1] - 1
        if h0 * w0 == n_stored and height == width:
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        m = int(math.sqrt(n_stored))
        grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        offset = self.cfg.interpolate_offset
        if offset:
            size_kw: dict = {"scale_factor": ((h0 + offset) / m, (w0 + offset) / m)}
        else:
            size_kw = {"size": (h0, w0)}
        grid = F.interpolate(grid, mode="bicubic", antialias=self.cfg.interpolate_antialias, **size_kw)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat((pos[:, :1], grid), dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch-embed, add the class token and positional embedding, insert register tokens."""
        _, _, height, width = x.shape
        check_image_size(height, width, self.patch_size)
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(height, width, tokens.dtype)
        if self.num_register_tokens:
            regs = self.register_tokens.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
            tokens = torch.cat((tokens[:, :1], regs, tokens[:, 1:]), dim=1)
        return tokens

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run all blocks; return normed class/register/patch tokens and the pre-norm sequence."""
        tokens = self.prepare_tokens(x)
        for blk in self.blocks:
            tokens = blk(tokens)
        normed = self.norm(tokens)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1 : r + 1],
            "x_norm_patchtokens": normed[:, r + 1 :],
            "x_prenorm": tokens,
        }

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last `n` blocks (or of the block indices in `n`), as in the official API."""
        wanted = wanted_layers(n, len(self.blocks))
        tokens = self.prepare_tokens(x)
        collected = []
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in wanted:
                collected.append(tokens)
        prefix, final_norm = 1 + self.num_register_tokens, self.norm if norm else None
        outputs, class_tokens, _ = split_layers(
            collected,
            wanted,
            len(self.blocks),
            image=x,
            patch_size=self.patch_size,
            prefix=prefix,
            norm=final_norm,
            reshape=reshape,
        )
        if return_class_token:
            return tuple(zip(outputs, class_tokens, strict=True))
        return tuple(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normed class token, like the official model with an identity head."""
        return self.forward_features(x)["x_norm_clstoken"]
