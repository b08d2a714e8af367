"""SegmentationModel: frozen means frozen, shapes, and the `info` summary."""

from __future__ import annotations

import pytest
import torch

from conftest import FIXTURES, TINY
from webdino_seg import SegmentationModel, SimpleDecoder, create_backbone, create_model
from webdino_seg.app.cli import main


def test_frozen_backbone_gets_no_gradients_head_gets_all() -> None:
    model = create_model("webdino-300m", weights=FIXTURES / "tiny_official.pth", num_classes=2, **TINY)
    model.train()
    assert not model.backbone.training and model.head.training
    x = torch.randn(2, 3, 56, 70)
    logits = model(x)
    assert logits.shape == (2, 2, 4, 5)
    logits.square().mean().backward()
    for name, p in model.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in model.backbone.named_parameters():
        assert p.grad is None and not p.requires_grad, name
    assert model.forward_upsampled(x).shape == (2, 2, 56, 70)


def test_fine_tune_trains_backbone_too() -> None:
    backbone = create_backbone("webdino-tiny")
    model = SegmentationModel(backbone, SimpleDecoder(backbone.embed_dim, 3), fine_tune=True)
    model.train()
    assert model.backbone.training
    model(torch.randn(1, 3, 28, 28)).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.parameters())) - 1  # all but the mask token, which no forward uses
    for name, p in trainable:  # an unused trainable parameter would stop DDP on its second step
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not model.backbone.mask_token.requires_grad


def test_head_channels_follow_backbone() -> None:
    with torch.device("meta"):
        model = create_model("dinov2-vitb14", num_classes=5)
    assert model.head.decode[0].in_channels == 768 and model.head.decode[2].out_channels == 5


def test_info_prints_the_tutorial_counts(capsys) -> None:
    assert main(["info", "--arch", "webdino-300m", "--imgsz", "644", "644", "--num-classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "Backbone params: 303,655,168" in out
    assert "Head params: 2,360,066" in out
    assert "Total params: 306,015,234" in out
    assert "Trainable params: 2,360,066" in out
    assert "[1, 2, 46, 46]" in out


def test_info_rejects_bad_size(capsys) -> None:
    assert main(["info", "--imgsz", "650", "644"]) == 2
    assert "use 644 or 658" in capsys.readouterr().err


@pytest.mark.slow  # builds every variant, the 7B ones included, on the meta device (no memory, ~15 s)
def test_every_trainable_parameter_of_every_variant_is_reached_by_the_loss() -> None:
    from webdino_seg.models.builder import create_model
    from webdino_seg.models.variants import VARIANTS, get_variant

    unreached = {}
    for arch in VARIANTS:
        for head in ("simple", "linear4") if arch.endswith("tiny") else ("simple",):
            with torch.device("meta"):
                model = create_model(arch, weights="random", fine_tune=True, head=head).train()
                p = get_variant(arch).patch_size
                model(torch.zeros(1, 3, 2 * p, 2 * p)).sum().backward()
            missed = [n for n, q in model.named_parameters() if q.requires_grad and q.grad is None]
            if missed:
                unreached[(arch, head)] = missed
    assert unreached == {}
