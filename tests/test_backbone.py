"""The backbone against the official Web-SSL code's golden outputs, and its shape rules."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FIXTURES, TINY
from webdino_seg import create_backbone, get_variant
from webdino_seg.models.layers import check_image_size
from webdino_seg.models.variants import VARIANTS

SOURCES = ["tiny_official.pth", "tiny_official_unchunked.pth", "tiny_hf", "tiny_hf/model.safetensors"]


@pytest.fixture(scope="module", params=SOURCES)
def tiny(request: pytest.FixtureRequest) -> torch.nn.Module:
    return create_backbone("webdino-300m", weights=FIXTURES / request.param, **TINY).eval()


@pytest.mark.parametrize("name", ["x1", "x2", "x3"])
def test_matches_official_outputs(tiny: torch.nn.Module, tiny_io: dict, name: str) -> None:
    ref = tiny_io[name]
    x = ref["input"]
    with torch.no_grad():
        feats = tiny.forward_features(x)
        layers = tiny.get_intermediate_layers(x, n=4, return_class_token=True)
    close = {"atol": 2e-6, "rtol": 0}  # we differ by 7e-7 at most; LayerNorm eps 1e-5 for 1e-6 moves 5e-5
    torch.testing.assert_close(feats["x_norm_clstoken"], ref["x_norm_clstoken"], **close)
    torch.testing.assert_close(feats["x_norm_patchtokens"], ref["x_norm_patchtokens"], **close)
    assert len(layers) == 4
    for (patch, cls), ref_patch, ref_cls in zip(
        layers, ref["intermediate_norm"], ref["intermediate_norm_clstoken"], strict=True
    ):
        torch.testing.assert_close(patch, ref_patch, **close)
        torch.testing.assert_close(cls, ref_cls, **close)
    if "pos_embed_interpolated" in ref:
        pos = tiny.interpolate_pos_encoding(x.shape[2], x.shape[3], torch.float32)
        torch.testing.assert_close(pos, ref["pos_embed_interpolated"], **close)


def test_reshape_and_prenorm(tiny_io: dict) -> None:
    model = create_backbone("webdino-300m", weights=FIXTURES / "tiny_official.pth", **TINY).eval()
    x = tiny_io["x2"]["input"]
    with torch.no_grad():
        (grid,) = model.get_intermediate_layers(x, n=1, reshape=True)
        feats = model.forward_features(x)
    ref = tiny_io["x2"]["x_norm_patchtokens"].reshape(1, 7, 11, 64).permute(0, 3, 1, 2)
    torch.testing.assert_close(grid, ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(model.norm(feats["x_prenorm"])[:, 1:], feats["x_norm_patchtokens"])
    assert model.embed_dim == 64 and model.patch_size == 14


@pytest.mark.parametrize(("size", "message"), [((650, 644), "use 644 or 658"), ((644, 20), "use 14 or 28")])
def test_bad_sizes_name_nearest_valid(size: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_image_size(*size)
    model = create_backbone("webdino-tiny")
    with pytest.raises(ValueError, match=message):
        model.forward_features(torch.zeros(1, 3, *size))


def test_any_multiple_of_14_works() -> None:
    model = create_backbone("webdino-tiny").eval()
    for h, w in [(14, 14), (28, 70), (98, 154), (224, 224), (462, 308)]:
        out = model.forward_features(torch.zeros(1, 3, h, w))["x_norm_patchtokens"]
        assert out.shape == (1, (h // 14) * (w // 14), 64)


def test_registers_take_their_place() -> None:
    model = create_backbone("dinov2-vits14-reg", embed_dim=32, depth=2, num_heads=2).eval()
    feats = model.forward_features(torch.randn(2, 3, 56, 42))
    assert feats["x_norm_regtokens"].shape == (2, 4, 32)
    assert feats["x_norm_patchtokens"].shape == (2, 12, 32)
    assert feats["x_prenorm"].shape == (2, 1 + 4 + 12, 32)


def test_300m_on_meta_has_the_official_keys_and_shapes() -> None:
    spec = json.loads((FIXTURES / "webdino300m_official_keys.json").read_text())
    with torch.device("meta"):
        model = create_backbone("webdino-300m")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == spec["unchunked"]
    assert list(ours) == list(spec["unchunked"])  # registration order too
    assert sum(p.numel() for p in model.parameters()) == spec["total_params"] == 303_655_168


def test_variant_table_facts() -> None:
    assert get_variant("webdino-300m").ffn_hidden == 2736
    assert get_variant("webdino-1b").ffn_hidden == 4096
    assert get_variant("webdino-300m").hub_id == "facebook/webssl-dino300m-full2b-224"
    assert get_variant("webdino-300m").url.endswith("/webssl/webssl_dino300m_full2b_224.pth")
    assert get_variant("webdino-7b-518").img_size == 518
    assert get_variant("webdino-2b-light").hub_id == "facebook/webssl-dino2b-light2b-224"
    assert get_variant("dinov2-vitl14-reg").num_register_tokens == 4
    for name in [
        "webdino-1b",
        "webdino-2b",
        "webdino-3b",
        "webdino-5b",
        "webdino-7b",
        "webdino-7b-378",
        "webdino-3b-heavy",
        "dinov2-vits14",
        "dinov2-vitb14",
        "dinov2-vitg14",
    ]:
        assert name in VARIANTS
    with pytest.raises(ValueError, match="unknown backbone 'webdino-9b'"):
        get_variant("webdino-9b")
    with pytest.raises(ValueError, match="unknown backbone option"):
        create_backbone("webdino-tiny", embed_dims=3)


@pytest.mark.parametrize("arch", ["webdino-1b", "webdino-3b", "webdino-7b-518", "dinov2-vitg14-reg"])
def test_large_variants_build_on_meta(arch: str) -> None:
    with torch.device("meta"):
        model = create_backbone(arch)
    cfg = get_variant(arch)
    assert model.pos_embed.shape == (1, cfg.grid**2 + 1, cfg.embed_dim)
    assert len(model.blocks) == cfg.depth
