"""Decoder heads, Dice loss and test-time augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_same_metrics, metrics_rows, tiny_config
from webdino_seg import create_model
from webdino_seg.data.datasets import SegmentationDataset
from webdino_seg.engine.features import extract
from webdino_seg.engine.losses import dice_loss, segmentation_loss
from webdino_seg.engine.train import train
from webdino_seg.inference.predictor import Predictor
from webdino_seg.models.checkpoint import load_model
from webdino_seg.models.heads import HEADS
from webdino_seg.models.variants import IMAGENET_MEAN, IMAGENET_STD
from webdino_seg.utils.runtime import RunContext

# logits size for a 56x84 input (4x6 token grid)
SHAPES = {"simple": (4, 6), "linear4": (4, 6), "multilayer": (16, 24), "guided": (16, 24)}


@pytest.mark.parametrize("name", list(HEADS))
def test_head_shapes_and_gradients(name: str) -> None:
    model = create_model("webdino-tiny", num_classes=3, head=name, seed=0)
    model.train()
    logits = model(torch.randn(2, 3, 56, 84))
    assert logits.shape == (2, 3, *SHAPES[name])
    logits.square().mean().backward()
    for pname, p in model.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert all(p.grad is None for p in model.backbone.parameters())
    params = sum(p.numel() for p in model.head.parameters())
    assert params < 5_000_000 if name != "linear4" else params == 4 * 64 * 2 + 4 * 64 * 3 + 3


@pytest.mark.parametrize("name", ["linear4", "multilayer", "guided"])
def test_heads_train_save_and_load_back(small: Path, tmp_path: Path, name: str) -> None:
    run = train(tiny_config(small, tmp_path / name, head=name, epochs=2, imgsz=(56, 84)), log=lambda *_: None)
    model, ckpt = load_model(run / "final_model.pth")
    assert ckpt["head_name"] == name and type(model.head) is HEADS[name]
    saved = torch.load(run / "final_model.pth", weights_only=True)["head"]
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in saved.items())
    predictor = Predictor.from_checkpoint(run / "final_model.pth", device="cpu")  # no extra flags
    assert predictor.predict(np.zeros((50, 70, 3), np.uint8)).shape == (50, 70)


@pytest.mark.parametrize("name", ["multilayer", "guided"])
def test_cached_inputs_equal_the_live_ones(small: Path, name: str) -> None:
    model = create_model("webdino-tiny", head=name, seed=0).eval()
    ds = SegmentationDataset(small, "train", (56, 84), IMAGENET_MEAN, IMAGENET_STD, augment=True, seed=1)
    cache = extract(model, ds, views=2, context=RunContext(torch.device("cpu")), batch=4)
    for view in range(2):
        inputs, masks = cache.batch(view, torch.arange(len(ds)), torch.device("cpu"))
        live = [ds[(view, i)] for i in range(len(ds))]
        images = torch.stack([img for img, _ in live])
        torch.testing.assert_close(inputs[0], model.features(images), atol=1e-5, rtol=0)
        assert torch.equal(masks, torch.stack([m for _, m in live]))
        if name == "guided":  # the augmented image, kept as uint8, comes back normalised as the live one
            torch.testing.assert_close(inputs[1], images, atol=1e-5, rtol=0)


def test_guided_head_cached_trains_like_live(small: Path, tmp_path: Path) -> None:
    kw = {"head": "guided", "epochs": 2, "cache_views": 2, "imgsz": (56, 56)}
    cached = metrics_rows(train(tiny_config(small, tmp_path / "c", **kw), log=lambda *_: None))
    live = metrics_rows(train(tiny_config(small, tmp_path / "l", cache=False, **kw), log=lambda *_: None))
    assert_same_metrics(cached, live, rel=1e-3)


def test_dice_loss_by_hand() -> None:
    probs = torch.tensor([[[[0.9, 0.2], [0.4, 0.5]]]])  # foreground probability, one 2x2 image
    probs = torch.cat([1 - probs, probs], 1)
    masks = torch.tensor([[[1, 0], [255, 1]]])  # one void pixel
    # foreground over non-void pixels: p = 0.9, 0.2, 0.5; y = 1, 0, 1
    dice = 2 * (0.9 + 0.5) / ((0.9 + 0.2 + 0.5) + 2)
    assert dice_loss(probs, masks).item() == pytest.approx(1 - dice, abs=1e-6)
    logits = probs.log()
    ce_sum, _ = segmentation_loss(logits, masks, "ce")
    both, _ = segmentation_loss(logits, masks, "ce+dice")
    assert both.item() == pytest.approx(ce_sum.item() + 3 * (1 - dice), abs=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        segmentation_loss(logits, masks, "focal")


class _PixelModel(nn.Module):
    """Flip-equivariant: averages each 14x14 patch, then a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = type("B", (), {"patch_size": 14})()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.avg_pool2d(x, 14))


def test_tta_flip_of_a_symmetric_input_is_the_plain_prediction() -> None:
    torch.manual_seed(0)
    model = _PixelModel()
    image = np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    image = np.concatenate([image, image[:, ::-1]], 1)  # left-right symmetric
    plain = Predictor(model, (56, 56), IMAGENET_MEAN, IMAGENET_STD, ["a", "b"], device="cpu")
    flipped = Predictor(
        model, (56, 56), IMAGENET_MEAN, IMAGENET_STD, ["a", "b"], device="cpu", tta=True, tta_scales=(1.0,)
    )
    torch.testing.assert_close(flipped.probabilities([image])[0], plain.probabilities([image])[0])
    assert np.array_equal(flipped.predict(image), plain.predict(image))


def test_tta_is_the_average_of_its_parts() -> None:
    model = create_model("webdino-tiny", seed=0)
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    tta = Predictor(model, (56, 56), IMAGENET_MEAN, IMAGENET_STD, ["a", "b"], device="cpu", tta=True)
    assert tta.tta_sizes == [(42, 42), (56, 56), (70, 70)] and "6 passes" in tta.describe_tta()
    parts = []
    for size in tta.tta_sizes:
        one = Predictor(model, size, IMAGENET_MEAN, IMAGENET_STD, ["a", "b"], device="cpu")
        parts.append(one.probabilities([image])[0])
        mirrored = one.probabilities([np.ascontiguousarray(image[:, ::-1])])[0]
        parts.append(mirrored.flip(-1))
    torch.testing.assert_close(tta.probabilities([image])[0], torch.stack(parts).mean(0), atol=1e-6, rtol=0)
    assert np.array_equal(tta.predict(image), torch.stack(parts).mean(0).argmax(0).numpy())


def test_the_guided_head_takes_its_boundaries_from_the_image() -> None:
    """Which pixels of a coarse cell take a class comes from the image; how much of the cell stays the coarse
    prediction's: another image gives another output, a blank image leaves only the bilinear ranking, every cell's
    mean probability is the coarse one (a head that ignores its image, or that learns a sharper grid upsampling
    instead, fails here)."""
    from webdino_seg.models.heads import GuidedDecoder, area_preserving

    torch.manual_seed(0)
    head = GuidedDecoder(64, 3).eval()
    features = torch.randn(1, 64, 4, 6)
    image = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        logits = head.coarse(features)
        coarse = logits.softmax(1)
        out = head(features, image).exp()  # (1, 3, 16, 24): 4x4 pixels per cell
        other = head(features, torch.randn(1, 3, 56, 84)).exp()
        blank = head(features, torch.zeros(1, 3, 56, 84)).exp()
        prior = F.interpolate(logits.log_softmax(1), size=(16, 24), mode="bilinear", align_corners=False)
        bilinear_only = area_preserving(head.upsample.prior * prior, coarse, 4).exp()
    assert (out - other).abs().max() > 0.1
    torch.testing.assert_close(F.avg_pool2d(out, 4), coarse, atol=0.03, rtol=0)  # up to the balancing's iterations
    rounds, head.upsample.rounds = head.upsample.rounds, 0  # the first decision alone keeps the shares exactly
    with torch.no_grad():
        torch.testing.assert_close(F.avg_pool2d(head(features, image).exp(), 4), coarse, atol=2e-3, rtol=0)
    head.upsample.rounds = rounds
    torch.testing.assert_close(out.sum(1), torch.ones(1, 16, 24))
    torch.testing.assert_close(blank, bilinear_only, atol=1e-4, rtol=0)  # nothing from a uniform image
    assert (out - bilinear_only).abs().max() > 0.1  # the image moved them
    small = torch.randn(1, 64, 5, 7)  # a size the encoder's stride does not divide (70 / 4), as CamVid's 224x294
    with torch.no_grad():
        odd = head(small, torch.randn(1, 3, 70, 98)).exp()
        assert odd.shape == (1, 3, 20, 28)
        torch.testing.assert_close(F.avg_pool2d(odd, 4), head.coarse(small).softmax(1), atol=0.03, rtol=0)


def test_the_guided_heads_prototype_scores_match_a_pixel_by_pixel_reference() -> None:
    """Each pixel's score for a class is -|f - P_c|^2 (up to |f|^2), P_c the embeddings the class holds in the
    pixel's 3x3 neighbour cells (edge cells repeated) over the shares it holds there, weighted by distance: the
    cell-by-cell computation equals that definition written out one pixel at a time."""
    from webdino_seg.models.heads import _prototype_scores, _squared_offsets

    torch.manual_seed(0)
    (h, w), cell, e, c = (3, 4), 3, 5, 3
    f = torch.randn(1, e, h * cell, w * cell, dtype=torch.float64)
    share = torch.randn(1, c, h * cell, w * cell, dtype=torch.float64).softmax(1)  # each pixel's class shares
    probs = F.avg_pool2d(share, cell)
    held = F.avg_pool2d((share.unsqueeze(2) * f.unsqueeze(1)).flatten(1, 2), cell).view(1, c, e, h, w)
    near = (-_squared_offsets((h, w), (h * cell, w * cell), f.device) / 2).exp().double()
    expected = torch.empty(1, c, h * cell, w * cell, dtype=torch.float64)
    for y in range(h * cell):
        for x in range(w * cell):
            for k in range(c):
                total, weight = torch.zeros(e, dtype=torch.float64), 0.0
                for n, (dy, dx) in enumerate((a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)):
                    i, j = min(max(y // cell + dy, 0), h - 1), min(max(x // cell + dx, 0), w - 1)
                    pixels = share[0, k, i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
                    cell_f = f[0, :, i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
                    total = total + near[n, y, x] * (pixels * cell_f).mean((1, 2))
                    weight = weight + near[n, y, x] * pixels.mean()
                proto = total / weight
                expected[0, k, y, x] = 2 * f[0, :, y, x] @ proto - proto @ proto
    torch.testing.assert_close(_prototype_scores(f, held, probs, near, cell), expected)


def test_the_guided_heads_coarse_shares_are_trained_through_the_upsampler() -> None:
    """The cell shares the upsampler keeps come from the coarse head, so the loss must reach it through them
    (not only through the image's ranking): with a uniform image and no bilinear ranking that is the only path."""
    from webdino_seg.models.heads import GuidedDecoder

    torch.manual_seed(0)
    head = GuidedDecoder(64, 3)
    with torch.no_grad():
        head.upsample.prior.zero_()
    out = head(torch.randn(2, 64, 4, 6), torch.zeros(2, 3, 56, 84))
    F.nll_loss(out, torch.randint(0, 3, (2, 16, 24))).backward()
    assert head.coarse.decode[2].weight.grad.norm() > 1e-2, head.coarse.decode[2].weight.grad.norm()
