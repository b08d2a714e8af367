"""SegmentationModel: a DINOv2-family backbone plus a decoder head, frozen or fine-tuned."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .dinov2 import DinoVisionTransformer
from .layers import fold_layer_scales

# parts of a backbone that only its pre-training uses (masked image modelling, local crops): no part in our
# forward pass, so never trained (a trainable parameter that gets no gradient makes DDP fail)
PRETRAINING_ONLY = ("mask_token", "local_cls_norm")


class SegmentationModel(nn.Module):
    """Backbone + head. A frozen backbone gets no gradients, stays in eval mode and runs in inference mode."""

    def __init__(self, backbone: DinoVisionTransformer, head: nn.Module, fine_tune: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.fine_tune = fine_tune
        if not fine_tune:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        else:
            for name in PRETRAINING_ONLY:
                part = getattr(self.backbone, name, None)
                if part is not None:
                    part.requires_grad_(False)

    def train(self, mode: bool = True) -> SegmentationModel:
        """Switch the head (and a fine-tuned backbone) to training mode; a frozen backbone stays in eval."""
        super().train(mode)
        if not self.fine_tune:
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor, *, layers: int | None = None) -> torch.Tensor:
        """What the head reads, as a (B, D, H/p, W/p) grid in the backbone's dtype: the last layer's normed
        patch tokens, or, for heads with ``layers = 4``, the last 4 layers' concatenated (B, 4D, H/p, W/p).
        `layers` asks for that many last layers whatever the head reads (a cache several heads share); the last
        layer's channels come last and equal the one-layer grid bit for bit."""
        dtype = self.backbone.patch_embed.proj.weight.dtype
        if images.dtype != dtype:  # a frozen backbone kept in bf16 on the GPU takes bf16 images
            images = images.to(dtype)
        if self.fine_tune:
            return self._grid(images, layers)
        # a frozen backbone kept in bf16 runs in bf16 as it is: autocast around it would only force its LayerNorms
        # to float32 (extra memory traffic); PyTorch's norm kernels keep their statistics in float32 anyway
        native = torch.autocast(images.device.type, enabled=False) if dtype != torch.float32 else nullcontext()
        with torch.inference_mode(), native:
            grid = self._grid(images, layers)
        return grid.clone()  # a normal tensor, so the head's autograd can use it

    def _grid(self, images: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        layers = layers or getattr(self.head, "layers", 1)
        if layers > 1:
            return torch.cat(self.backbone.get_intermediate_layers(images, n=layers, reshape=True, norm=True), 1)
        tokens = self.backbone.forward_features(images)["x_norm_patchtokens"]
        b, _, height, width = images.shape
        p = self.backbone.patch_size
        return tokens.transpose(1, 2).reshape(b, tokens.shape[-1], height // p, width // p)

    @property
    def needs_image(self) -> bool:
        """Whether the head also reads the (normalised) image."""
        return getattr(self.head, "needs_image", False)

    def freeze_in(self, dtype: torch.dtype) -> SegmentationModel:
        """Keep a frozen backbone's weights in `dtype` (bf16 on a GPU): cast once, not on every forward as
        autocast does for weights that need no gradient, with its LayerScales folded into the layers before them
        (in float32, then cast: see `fold_layer_scales`). LayerNorm statistics are still accumulated in float32
        by PyTorch's kernels. A fine-tuned backbone is left as it is."""
        if not self.fine_tune:
            fold_layer_scales(self.backbone.blocks)
            self.backbone.to(dtype)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits from the head: on the token grid (B, classes, H/p, W/p), or finer for heads that upsample."""
        if self.needs_image:
            return self.head(self.features(images), images.float())
        return self.head(self.features(images))

    def forward_upsampled(self, images: torch.Tensor) -> torch.Tensor:
        """Logits bilinearly upsampled to the input size: (B, classes, H, W)."""
        return upsample(self(images), images.shape[-2:])


def upsample(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of logits to `size` (H, W)."""
    # contiguous first: a head's channels-last output takes bilinear's slow path on the CPU (3.4x; same values)
    return F.interpolate(logits.contiguous(), size=tuple(size), mode="bilinear", align_corners=False)


def model_input(images: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB images as the model takes them: bilinear resize to `size` (as cv2's INTER_LINEAR
    in training), scaled to [0, 1], normalised by `mean` and `std` (broadcastable, e.g. (1, 3, 1, 1))."""
    # contiguous first: decoded frames arrive channels-last, bilinear's slow path on the CPU (same values)
    x = F.interpolate(images.contiguous().float().div_(255), size=tuple(size), mode="bilinear", align_corners=False)
    return (x - mean) / std
