"""Decoder heads: token-grid features (and, for `guided`, the image) in, per-class logits out.

Each head says what it needs from the backbone: ``layers`` (the last layer, or the last 4 layers'
normed patch tokens concatenated on the channels) and ``needs_image``. Logits come out on the
token grid (`simple`, `linear4`) or finer (`multilayer` at 4x, `guided` at 1/4 of the image); the
loss and the Predictor upsample them to the mask or image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SimpleDecoder(nn.Module):
    """The tutorial's head: 3x3 conv to 256 channels, ReLU, 1x1 conv to the classes."""

    layers = 1
    needs_image = False

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.decode = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, kernel_size=1),
        )

    def forward(self, features: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(features)


class Linear4(nn.Module):
    """DINOv2's linear protocol on the last 4 layers: BatchNorm and a 1x1 conv over their concatenated
    normed patch tokens (Oquab et al., 2023, "linear4")."""

    layers = 4
    needs_image = False

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(4 * in_channels)
        self.classify = nn.Conv2d(4 * in_channels, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.norm(features))


class _Residual(nn.Module):
    """DPT's residual conv unit: x + conv(relu(conv(relu(x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class MultiLayerDecoder(nn.Module):
    """A small DPT-style decoder (Ranftl et al., 2021): the last 4 layers are projected, reassembled at 4x,
    2x, 1x and 1/2x the token grid, and fused coarse to fine with residual conv units; logits at 4x the grid."""

    layers = 4
    needs_image = False

    def __init__(self, in_channels: int, num_classes: int, width: int = 96) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(in_channels, width, 1) for _ in range(4))
        self.resample = nn.ModuleList(
            [
                nn.ConvTranspose2d(width, width, 4, stride=4),  # layer 1 (shallowest of the 4): 4x
                nn.ConvTranspose2d(width, width, 2, stride=2),  # 2x
                nn.Identity(),  # 1x
                nn.Conv2d(width, width, 3, stride=2, padding=1),  # 1/2x
            ]
        )
        self.fuse = nn.ModuleList(_Residual(width) for _ in range(4))
        self.refine = nn.ModuleList(_Residual(width) for _ in range(4))
        self.classify = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(width, num_classes, 1))  # fmt: skip

    def forward(self, features: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        maps = [rs(proj(f)) for f, proj, rs in zip(features.chunk(4, dim=1), self.project, self.resample, strict=True)]
        x = self.refine[3](self.fuse[3](maps[3]))
        for i in (2, 1, 0):  # deepest to shallowest, rising resolution
            x = F.interpolate(x, size=maps[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.refine[i](x + self.fuse[i](maps[i]))
        return self.classify(x)


class GuidedUpsampler(nn.Module):
    """Upsample coarse maps (B, C, h, w) to 1/4 of the image's size, guided by the image.

    A few strided convolutions encode the RGB image at 1/4 of its size. Each fine pixel's query
    attends to the 3x3 coarse cells around it, whose keys come from the image encoding pooled onto
    the coarse grid plus a learned bias per neighbour, and takes the attention-weighted sum of their
    values. The output is the bilinear upsampling plus a correction, computed by a small convolution
    from the image encoding, the bilinear and the attended maps; the correction starts near zero, so
    training starts from bilinear upsampling and learns where the image says otherwise. A local, light
    form of the learned, image-guided upsamplers for ViT features (JAFAR, Couairon et al. 2025;
    LoftUp, Huang et al. 2025; FeatUp's joint bilateral upsampler, Fu et al. 2024).
    """

    def __init__(self, channels: int, guide: int = 48, key: int = 32) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(3, 24, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(24, guide, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(guide, guide, 3, padding=1), nn.GELU(),
        )  # fmt: skip
        self.query = nn.Conv2d(guide, key, 1)
        self.key = nn.Conv2d(guide + channels, key, 1)
        self.offset_bias = nn.Parameter(torch.zeros(9))
        self.refine = nn.Sequential(nn.Conv2d(guide + 2 * channels, guide, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(guide, guide, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(guide, channels, 3, padding=1))  # fmt: skip
        nn.init.normal_(self.refine[-1].weight, std=1e-3)  # starts as (almost exactly) bilinear upsampling
        nn.init.zeros_(self.refine[-1].bias)
        self.scale = 1 / math.sqrt(key)

    @staticmethod
    def _neighbours(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, 9, H, W): each fine pixel's 3x3 coarse neighbourhood (edges replicated)."""
        b, c, h, w = x.shape
        cells = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3).view(b, c * 9, h, w)
        return F.interpolate(cells, size=size, mode="nearest").view(b, c, 9, *size)

    def forward(self, coarse: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        guide = self.encode(image)
        size = guide.shape[-2:]
        pooled = F.adaptive_avg_pool2d(guide, coarse.shape[-2:])
        keys = self._neighbours(self.key(torch.cat([pooled, coarse], 1)), size)
        query = self.query(guide)
        attention = ((query.unsqueeze(2) * keys).sum(1) * self.scale + self.offset_bias.view(1, 9, 1, 1)).softmax(1)
        attended = (attention.unsqueeze(1) * self._neighbours(coarse, size)).sum(2)
        bilinear = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        return bilinear + self.refine(torch.cat([guide, bilinear, attended], 1))


class GuidedDecoder(nn.Module):
    """The tutorial's head on the last layer, its token-grid logits upsampled by a `GuidedUpsampler` that
    sees the image: logits at 1/4 of the image's size, trained end to end with the head."""

    layers = 1
    needs_image = True

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.coarse = SimpleDecoder(in_channels, num_classes)
        self.upsample = GuidedUpsampler(num_classes)

    def forward(self, features: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if image is None:
            raise ValueError("the guided head needs the image")
        return self.upsample(self.coarse(features), image)


HEADS = {"simple": SimpleDecoder, "linear4": Linear4, "multilayer": MultiLayerDecoder, "guided": GuidedDecoder}


def head_name(head: nn.Module) -> str:
    """The name `create_head` knows a head by."""
    for name, cls in HEADS.items():
        if type(head) is cls:
            return name
    raise ValueError(f"{type(head).__name__} is not one of the known heads: {', '.join(HEADS)}")


def create_head(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """Build a head by name: simple, linear4, multilayer or guided."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}")
    return HEADS[name](in_channels, num_classes)
