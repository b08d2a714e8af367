"""Interop: Hugging Face folders that transformers loads, and ONNX exports that onnxruntime runs like PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES, TINY, cli_error
from webdino_seg import convert_weights, create_backbone
from webdino_seg.app.cli import main
from webdino_seg.models import variants
from webdino_seg.models.weights.errors import WeightsError

transformers = pytest.importorskip("transformers")
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pennfudan-sample"


def _ours(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model.forward_features(x)
    return torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_regtokens"], out["x_norm_patchtokens"]], 1)


def test_transformers_loads_our_webdino_export(tmp_path: Path) -> None:
    convert_weights(FIXTURES / "tiny_official.pth", tmp_path / "hf", "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["mlp_ratio"] == 4 and isinstance(config["mlp_ratio"], int)  # transformers 5 refuses 4.0
    theirs = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    ours = create_backbone("webdino-300m", weights=FIXTURES / "tiny_official.pth", **TINY).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        assert (theirs(pixel_values=x).last_hidden_state - _ours(ours, x)).abs().max() < 1e-5
        # at other sizes transformers resizes the position grid without the official +0.1 offset (README)
        x = torch.randn(1, 3, 644, 644, generator=torch.Generator().manual_seed(0))
        assert (theirs(pixel_values=x).last_hidden_state - _ours(ours, x)).abs().max() > 1e-3


def test_register_checkpoint_converts_without_arch(tmp_path: Path) -> None:
    model = create_backbone("dinov2-vits14-reg", seed=0).eval()
    torch.save(model.state_dict(), tmp_path / "reg.pth")
    convert_weights(tmp_path / "reg.pth", tmp_path / "hf", "hf")  # no --arch: told from the keys
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Dinov2WithRegistersModel"] and config["num_register_tokens"] == 4
    theirs = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, expected = theirs(pixel_values=x).last_hidden_state, _ours(model, x)
    assert got.shape == expected.shape == (1, 1 + 4 + 256, 384)
    assert (got - expected).abs().max() < 1e-5


def test_ambiguous_keys_ask_for_arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = variants.VARIANTS["webdino-tiny"]
    monkeypatch.setitem(variants.VARIANTS, "webdino-tiny-8heads", tiny.replace(name="webdino-tiny-8heads", num_heads=8))
    with pytest.raises(WeightsError, match=r"fit several architectures \(webdino-tiny, webdino-tiny-8heads\).*--arch"):
        convert_weights(FIXTURES / "tiny_official.pth", tmp_path / "hf", "hf")
    convert_weights(FIXTURES / "tiny_official.pth", tmp_path / "hf", "hf", variants.VARIANTS["webdino-tiny"])


# --- ONNX -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(112, 112), pytest.param((84, 140), marks=pytest.mark.slow)])
def test_onnx_logits_match_pytorch(ckpt: Path, tmp_path: Path, size: tuple[int, int]) -> None:
    import onnxruntime as ort

    from webdino_seg.inference.onnx import ExportedGraph, export_onnx
    from webdino_seg.models.checkpoint import load_model

    out = tmp_path / "model.onnx"
    info = export_onnx(ckpt, out, imgsz=size, dynamic=True, log=lambda *_: None)
    assert info["max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == ["background", "person"] and json.loads(meta["imgsz"]) == list(size)
    model, saved = load_model(ckpt)
    graph = ExportedGraph(model, saved["mean"], saved["std"]).eval()
    x = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(2))  # a batch size not exported with
    logits, grid, ids = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = graph(x)
    assert logits.shape == (3, 2, *size) and grid.shape == (3, 2, size[0] // 14, size[1] // 14)
    assert np.abs(logits - expected[0].numpy()).max() < 1e-4
    assert (ids == expected[2].numpy()).mean() > 0.999


def test_predict_with_onnx_equals_the_pth_path(ckpt: Path, tmp_path: Path, capsys) -> None:
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--model", str(ckpt), "--out", str(onnx_path)]) == 0
    assert "max abs logit difference" in capsys.readouterr().out
    images = str(SAMPLE / "valid_images")
    assert main(["predict", "--input", images, "--model", str(ckpt), "--out", str(tmp_path / "pth")]) == 0
    assert main(["predict", "--input", images, "--model", str(onnx_path), "--out", str(tmp_path / "onnx")]) == 0
    masks = sorted((tmp_path / "pth").glob("*_mask.png"))
    assert len(masks) == 4
    for mask in masks:
        a, b = np.asarray(Image.open(mask)), np.asarray(Image.open(tmp_path / "onnx" / mask.name))
        assert (a != b).mean() < 1e-4, mask.name
    cli_error(
        ["predict", "--input", images, "--model", str(onnx_path), "--imgsz", "112", "112"],
        capsys,
        "was exported at 224x224",
    )
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    cli_error(
        ["predict", "--input", images, "--model", str(tmp_path / "junk.onnx")], capsys, "junk.onnx", "not an ONNX model"
    )


def test_export_int8_quantizes_the_matmuls_and_predict_says_so(ckpt: Path, tmp_path: Path, capsys) -> None:
    import onnx

    onnx_path = tmp_path / "int8.onnx"
    assert main(["export", "--model", str(ckpt), "--out", str(onnx_path), "--int8"]) == 0
    said = capsys.readouterr().out
    assert "int8 MatMuls" in said and "max abs logit difference" in said
    graph = onnx.load(str(onnx_path))
    ops = {node.op_type for node in graph.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, sorted(ops)
    assert {p.key: p.value for p in graph.metadata_props}["precision"] == "int8"
    assert [p.name for p in tmp_path.iterdir()] == ["int8.onnx"]  # the float graph it was made from is gone
    images = str(SAMPLE / "valid_images")
    assert main(["predict", "--input", images, "--model", str(ckpt), "--out", str(tmp_path / "pth")]) == 0
    assert main(["predict", "--input", images, "--model", str(onnx_path), "--out", str(tmp_path / "onnx")]) == 0
    assert "precision: int8 by onnxruntime" in capsys.readouterr().err
    same = total = 0
    for mask in sorted((tmp_path / "pth").glob("*_mask.png")):
        a, b = np.asarray(Image.open(mask)), Image.open(tmp_path / "onnx" / mask.name)
        assert (b.text["Precision"], b.text["Engine"]) == ("int8", "onnxruntime")
        same, total = same + int((a == np.asarray(b)).sum()), total + a.size
    assert total and same / total >= 0.99
    cli_error(
        ["predict", "--input", images, "--model", str(onnx_path), "--precision", "bf16"], capsys, "computing in int8"
    )
