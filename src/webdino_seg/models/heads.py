"""Decoder heads: token-grid features (and, for `guided`, the image) in, per-class logits out.

Each head says what it needs from the backbone: ``layers`` (the last layer, or the last 4 layers'
normed patch tokens concatenated on the channels) and ``needs_image``. Logits come out on the
token grid (`simple`, `linear4`) or finer (`multilayer` at 4x, `guided` at about 1/4 of the image); the
loss and the Predictor upsample them to the mask or image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .names import HEAD_NAMES


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
        self.classify = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, num_classes, 1)
        )

    def forward(self, features: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        maps = [rs(proj(f)) for f, proj, rs in zip(features.chunk(4, dim=1), self.project, self.resample, strict=True)]
        x = self.refine[3](self.fuse[3](maps[3]))
        for i in (2, 1, 0):  # deepest to shallowest, rising resolution
            x = F.interpolate(x, size=maps[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.refine[i](x + self.fuse[i](maps[i]))
        return self.classify(x)


def _cells3(x: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) -> (B, K, 9, h, w): each coarse cell's 3x3 neighbourhood (edges replicated)."""
    b, k, h, w = x.shape
    return F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3).view(b, k, 9, h, w)


def _prototype_scores(
    f: torch.Tensor, held: torch.Tensor, probs: torch.Tensor, near: torch.Tensor, cell: int
) -> torch.Tensor:
    """-|f - P_c|^2 up to a per-pixel constant, (B, C, H, W): each pixel's embedding `f` (B, E, H, W) against class
    prototypes P_c, the embeddings each class holds in the pixel's 3x3 neighbour cells (`held`, (B, C, E, h, w): per
    cell, the mean of the class's share times the embedding) over the shares they hold there (`probs`, (B, C, h, w)),
    weighted by distance `near` (9, H, W). Computed cell by cell, so backward keeps only the inputs and the cells'
    sums."""
    (b, e, big_h, big_w), c = f.shape, probs.shape[1]
    h, w = big_h // cell, big_w // cell
    sums = _cells3(held.flatten(1, 2)).view(b, c, e, 9, h, w)
    near = near.view(9, h, cell, w, cell)
    total = torch.einsum("bcnhw,nhpwq->bchpwq", _cells3(probs), near).clamp_min(1e-6)
    dots = torch.einsum("bkhpwq,bcknhw->bcnhpwq", f.view(b, e, h, cell, w, cell), sums)
    gram = torch.einsum("bcknhw,bckmhw->bcnmhw", sums, sums)
    square = (torch.einsum("bcnmhw,mhpwq->bcnhpwq", gram, near) * near).sum(2)  # |sum_n near_n sums_n|^2
    return (2 * (dots * near).sum(2) / total - square / total.square()).reshape(b, c, big_h, big_w)


def _squared_offsets(coarse: tuple[int, int], fine: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(9, H, W): squared distance, in cells, from each fine pixel to the centres of its 3x3 neighbour cells."""
    (h, w), (big_h, big_w) = coarse, fine
    ys = torch.arange(big_h, device=device, dtype=torch.float32)
    xs = torch.arange(big_w, device=device, dtype=torch.float32)
    step = torch.arange(-1.0, 2.0, device=device)
    dy = ((ys + 0.5) * h / big_h - 0.5 - torch.floor(ys * h / big_h))[None] - step[:, None]
    dx = ((xs + 0.5) * w / big_w - 0.5 - torch.floor(xs * w / big_w))[None] - step[:, None]
    return (dy.square()[:, None, :, None] + dx.square()[None, :, None, :]).reshape(9, big_h, big_w)


def area_preserving(scores: torch.Tensor, fractions: torch.Tensor, cell: int, iters: int = 20) -> torch.Tensor:
    """Log-probabilities (B, C, h*cell, w*cell) that follow `scores` (B, C, same size) inside each coarse cell while
    every cell's mean keeps its class `fractions` (B, C, h, w): Sinkhorn's balancing between the pixels (each a
    distribution over classes) and the classes (each the cell's share of its cell*cell pixels)."""
    b, c, h, w = fractions.shape
    n = cell * cell
    z = scores.float().view(b, c, h, cell, w, cell).permute(0, 2, 4, 1, 3, 5).reshape(b, h, w, c, n)
    mass = fractions.float().clamp_min(1e-6).log().permute(0, 2, 3, 1).unsqueeze(-1) + math.log(n)
    with torch.no_grad():  # the balancing offsets, found without building a graph
        v = torch.zeros_like(mass)
        for _ in range(iters):
            u = -(z + v).logsumexp(3, keepdim=True)
            v = mass - (z + u).logsumexp(4, keepdim=True)
    v = v + (mass - mass.detach())  # the same values; a class's share of a cell raises its pixels' logits in training
    logq = (z + v).log_softmax(3)
    return logq.view(b, h, w, c, cell, cell).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * cell, w * cell)


class GuidedUpsampler(nn.Module):
    """Upsample coarse class logits (B, C, h, w) to about 1/4 of the image's size, deciding boundaries from the image.

    A few convolutions (and the colour itself) embed each pixel of the image at 1/4 of its size. Each
    pixel compares itself with class prototypes of its 3x3 neighbourhood of coarse cells: the cells' mean
    embeddings, weighted by their class probabilities and by distance (a joint bilateral upsampler whose
    range term is learned: FeatUp's JBU, Fu et al. 2024; JAFAR, Couairon et al. 2025), plus a small learned
    weight times the bilinear upsampling of the coarse log-probabilities. Those scores decide *which*
    pixels of a cell take each class; *how much* of the cell each class takes stays the coarse
    prediction's (every cell's mean probability is kept, up to the balancing's iterations). Then, `rounds`
    times, each class's prototypes are re-estimated from the pixels it was given (an EM step) and the pixels
    decided again. With a blank or another image, only the weak bilinear term ranks the pixels: measured on
    the upsampling proxy, that is no better than bilinear upsampling (benchmarks/upsampling_oracle.py).
    """

    def __init__(self, channels: int, guide: int = 32, embed: int = 16, stride: int = 4, rounds: int = 2) -> None:
        super().__init__()
        self.stride, self.rounds = stride, rounds
        pad = {"padding": 1, "padding_mode": "replicate"}  # a uniform image embeds uniformly, borders included
        self.encode = nn.Sequential(
            nn.Conv2d(3, 24, 3, stride=2, **pad),
            nn.GELU(),
            nn.Conv2d(24, guide, 3, stride=stride // 2, **pad),
            nn.GELU(),
            nn.Conv2d(guide, guide, 3, **pad),
            nn.GELU(),
            nn.Conv2d(guide, guide, 3, **pad),
        )
        self.embed = nn.Conv2d(guide + 3, embed, 1)
        with torch.no_grad():  # starts as colour similarity, the learned channels small
            self.embed.weight.zero_()
            self.embed.bias.zero_()
            self.embed.weight[:3, guide:, 0, 0] = torch.eye(3)
            self.embed.weight[3:, :guide].normal_(std=0.1)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.1)))
        self.log_sigma = nn.Parameter(torch.tensor(0.0))  # the spatial reach, in cells
        self.prior = nn.Parameter(torch.tensor(0.1))  # the weight of the bilinear ranking

    def cell(self, image_height: int, grid_height: int) -> int:
        """Output pixels per token cell side: the grid's cells split to about `stride` image pixels each."""
        return max(1, round(image_height / grid_height / self.stride))

    def forward(self, coarse: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h, w = coarse.shape[-2:]
        cell = self.cell(image.shape[-2], h)
        size = (h * cell, w * cell)
        encoded = self.encode(image)  # sizes not divisible by the stride round up here
        pixels = torch.cat([encoded, F.adaptive_avg_pool2d(image, encoded.shape[-2:])], 1)
        if pixels.shape[-2:] != size:
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        f = F.normalize(self.embed(pixels), dim=1)
        near = (-_squared_offsets((h, w), size, coarse.device) / (2 * self.log_sigma.exp() ** 2)).exp()
        probs = coarse.softmax(1)
        prior = F.interpolate(coarse.log_softmax(1), size=size, mode="bilinear", align_corners=False)
        (b, c), e = probs.shape[:2], f.shape[1]
        held = probs.unsqueeze(2) * F.adaptive_avg_pool2d(f, (h, w)).unsqueeze(1)  # first: a cell's pixels alike
        for step in range(1 + self.rounds):
            scores = _prototype_scores(f, held, probs, near, cell)
            logq = area_preserving(scores / self.log_temperature.exp() + self.prior * prior, probs, cell)
            if step < self.rounds:  # each class's prototype from the pixels it now holds (EM)
                held = F.avg_pool2d((logq.exp().unsqueeze(2) * f.unsqueeze(1)).flatten(1, 2), cell).view(b, c, e, h, w)
        return logq


class GuidedDecoder(nn.Module):
    """The tutorial's head on the last layer, its token-grid logits upsampled by a `GuidedUpsampler` that
    sees the image: log-probabilities at about 1/4 of the image's size, trained end to end with the head."""

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


# each of the names the CLI offers (models/names.py) and its class: a name without a class is an error at import
HEADS = dict(zip(HEAD_NAMES, (SimpleDecoder, Linear4, MultiLayerDecoder, GuidedDecoder), strict=True))


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
