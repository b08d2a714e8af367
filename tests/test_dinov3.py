"""DINOv3 backbones: exact to the official code, strict in every format, and usable by every command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES, make_subset, metrics_rows, tiny_config
from webdino_seg import convert_weights, create_backbone
from webdino_seg.app.cli import main
from webdino_seg.engine.train import train
from webdino_seg.models.weights import dinov3 as v3_keys

V3 = FIXTURES / "dinov3"
TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4}
RELEASED = {  # fixture name -> our variant
    "vits16": "dinov3-vits16",
    "vits16plus": "dinov3-vits16plus",
    "vitb16": "dinov3-vitb16",
    "vitl16": "dinov3-vitl16",
    "vitl16_sat493m": "dinov3-vitl16-sat",
    "vitl16plus": "dinov3-vitl16plus",
    "vith16plus": "dinov3-vith16plus",
    "vit7b16": "dinov3-vit7b16",
    "vit7b16_sat493m": "dinov3-vit7b16-sat",
}
TOKENS = ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens", "x_prenorm")


@pytest.fixture(scope="module")
def inputs() -> dict:
    return {k: v["input"] for k, v in torch.load(V3 / "tiny_vits16_io.pt", weights_only=True).items() if "input" in v}


@pytest.mark.parametrize("name", ["vits16", "vits16plus"])
@pytest.mark.parametrize("source", ["official.pth", "hf"])
def test_tiny_models_match_every_official_tensor(inputs: dict, name: str, source: str) -> None:
    expected = torch.load(V3 / f"tiny_{name}_io.pt", weights_only=True)
    model = create_backbone(f"dinov3-{name}", weights=V3 / f"tiny_{name}_{source}", **TINY).eval()
    worst = 0.0

    def check(got: torch.Tensor, want: torch.Tensor) -> None:
        nonlocal worst
        assert got.shape == want.shape
        worst = max(worst, (got - want).abs().max().item())

    with torch.no_grad():
        for key in ("x1", "x2", "x3"):
            x, want = inputs[key], expected[key]
            out = model.forward_features(x)
            for token in TOKENS:
                check(out[token], want[token])
            check(model(x), want["forward"])
            layers = model.get_intermediate_layers(x, n=4, norm=True, return_class_token=True, return_extra_tokens=True)
            refs = zip(
                want["intermediate_norm"],
                want["intermediate_norm_clstoken"],
                want["intermediate_norm_storage_tokens"],
                strict=True,
            )
            for (patch, cls, extra), (p, c, e) in zip(layers, refs, strict=True):
                check(patch, p), check(cls, c), check(extra, e)
            sin, cos = model.rope_embed(x.shape[2] // 16, x.shape[3] // 16)
            check(sin, want["rope_sin"]), check(cos, want["rope_cos"])
        masked = expected["x2_masked"]
        out = model.forward_features(inputs["x2"], masks=masked["masks"])
        for token in TOKENS:
            check(out[token], masked[token])
    assert worst <= 5e-6, worst  # we differ by 1.7e-6 at most; a LayerNorm eps of 1e-6 for 1e-5 moves ~5e-5


@pytest.mark.parametrize("fixture", list(RELEASED))
def test_released_variants_have_the_official_keys(fixture: str) -> None:
    official = json.loads((V3 / f"{fixture}_official_keys.json").read_text())
    with torch.device("meta"):
        model = create_backbone(RELEASED[fixture])
    sd = model.state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == list(official.items())
    hf_file = V3 / f"{fixture}_hf_keys.json"
    if hf_file.exists():
        hf = json.loads(hf_file.read_text())["hf_keys"]
        as_hf = v3_keys.official_to_hf(sd)
        assert {k: list(v.shape) for k, v in as_hf.items()} == hf
        fake = {k: torch.empty(v, device="meta") for k, v in hf.items()}
        back = v3_keys.complete(v3_keys.hf_to_official(fake), model.cfg)
        assert {k: list(v.shape) for k, v in back.items()} == official


@pytest.mark.parametrize(
    ("arch", "count"),
    [
        ("dinov3-vits16", "21,601,152"),
        ("dinov3-vitb16", "85,669,632"),
        ("dinov3-vitl16", "303,154,176"),
        ("dinov3-vith16plus", "840,633,600"),
        ("dinov3-vit7b16", "6,716,043,264"),
    ],
)
def test_info_counts_equal_the_official_ones(arch: str, count: str, capsys) -> None:
    assert main(["info", "--arch", arch, "--imgsz", "224", "224"]) == 0
    assert f"Backbone params: {count}" in capsys.readouterr().out


def test_convert_both_ways_and_transformers_agrees(tmp_path: Path, inputs: dict) -> None:
    src = V3 / "tiny_vits16plus_official.pth"
    arch = create_backbone("dinov3-vits16plus", **TINY).cfg  # the tiny shape: not a listed variant
    convert_weights(src, tmp_path / "hf", "hf", arch)
    convert_weights(tmp_path / "hf", tmp_path / "back.pth", "official")
    original, back = torch.load(src, weights_only=True), torch.load(tmp_path / "back.pth", weights_only=True)
    assert original.keys() == back.keys()
    for key, value in original.items():
        if key.endswith("qkv.bias"):  # the key third is masked out in the model, and dropped by HF
            third = value.numel() // 3
            value = torch.cat([value[:third], torch.zeros(third), value[2 * third :]])
        assert torch.equal(value, back[key]), key
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    ours = create_backbone("dinov3-vits16plus", weights=src, **TINY).eval()
    with torch.no_grad():
        got = theirs(pixel_values=inputs["x2"]).last_hidden_state
        out = ours.forward_features(inputs["x2"])
    want = torch.cat([out["x_norm_clstoken"][:, None], out["x_storage_tokens"], out["x_norm_patchtokens"]], 1)
    assert (got - want).abs().max() < 1e-5


def test_strict_loading_names_what_is_wrong(tmp_path: Path) -> None:
    from webdino_seg import WeightsError

    sd = torch.load(V3 / "tiny_vits16_official.pth", weights_only=True)
    sd.pop("blocks.2.ls1.gamma")
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match=r"missing key\(s\): blocks\.2\.ls1\.gamma"):
        create_backbone("dinov3-vits16", weights=tmp_path / "broken.pth", **TINY)
    with pytest.raises(WeightsError, match="shape mismatch"):
        create_backbone("dinov3-vitb16", weights=V3 / "tiny_vits16_official.pth")


def test_a_dinov3_backbone_trains_predicts_and_segments_video(prepared: Path, tmp_path: Path, capsys) -> None:
    data = make_subset(prepared, tmp_path / "data", 16, 4)
    run = train(
        tiny_config(data, tmp_path / "run", arch="dinov3-tiny", imgsz=(224, 224), epochs=5, lr=3e-3, cache_views=1),
        log=lambda *_: None,
    )
    rows = metrics_rows(run)
    baseline = torch.load(run / "final_model.pth", weights_only=True)["baseline"]["miou"]
    assert max(float(r["valid_miou"]) for r in rows) > baseline + 0.02  # learns above all-background
    model = str(run / "best_model_iou.pth")
    assert main(["predict", "--input", str(data / "valid_images"), "--model", model, "--out", str(tmp_path / "p")]) == 0
    masks = sorted((tmp_path / "p").glob("*_mask.png"))
    assert len(masks) == 4
    clip = Path(__file__).resolve().parents[1] / "examples" / "people_walking_clip.mp4"
    assert (
        main(["video", "--input", str(clip), "--model", model, "--out", str(tmp_path / "v.mp4"), "--max-frames", "4"])
        == 0
    )
    assert (tmp_path / "v.mp4").stat().st_size > 0
    assert main(["train", "--data", str(data), "--arch", "dinov3-tiny", "--weights", "random", "--epochs", "1"]) == 2
    assert "use 640 or 656" in capsys.readouterr().err  # the default 644 is not a multiple of 16
    assert np.isfinite([float(r["valid_loss"]) for r in rows]).all()


@pytest.mark.parametrize(
    ("head", "grid"), [("simple", (4, 6)), ("linear4", (4, 6)), ("multilayer", (16, 24)), ("guided", (16, 24))]
)
def test_every_head_on_a_dinov3_backbone(head: str, grid: tuple[int, int]) -> None:
    from webdino_seg import create_model

    model = create_model("dinov3-tiny", head=head, seed=0)
    logits = model(torch.randn(2, 3, 64, 96))
    assert logits.shape == (2, 2, *grid)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())
