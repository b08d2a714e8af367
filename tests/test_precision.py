"""CPU inference in bf16 and int8: masks that agree with float32, the caller's model untouched, choices said."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FIXTURES, tiny_config
from webdino_seg.app.cli import main
from webdino_seg.data.images import read_image
from webdino_seg.inference import openvino as ov_engine
from webdino_seg.inference import precision as precision_mod
from webdino_seg.inference.predictor import Predictor

NEEDS_BF16 = pytest.mark.skipif(not precision_mod.native_bf16(), reason="this CPU has no native bf16")
NEEDS_OPENVINO = pytest.mark.skipif(not ov_engine.available(), reason="OpenVINO is not installed (the openvino extra)")
ENGINES = [
    pytest.param("int8", "torch", id="int8-torch"),
    pytest.param("bf16", "torch", id="bf16-torch", marks=NEEDS_BF16),
    pytest.param("int8", "openvino", id="int8-openvino", marks=NEEDS_OPENVINO),
    pytest.param("bf16", "openvino", id="bf16-openvino", marks=[NEEDS_BF16, NEEDS_OPENVINO]),
]


@pytest.fixture(scope="module")
def real_ckpt(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A head trained on the golden tiny backbone, whose weights are a trained model's (LayerScale near 1): a
    random backbone's blocks barely move its tokens (LayerScale 1e-5), so quantizing them would change nothing."""
    from webdino_seg import train

    golden = str(FIXTURES / "tiny_official.pth")
    cfg = tiny_config(prepared, tmp_path_factory.mktemp("precision") / "run", weights=golden, epochs=8, lr=1e-2, seed=0)
    return train(cfg, log=lambda *_: None) / "best_model_iou.pth"


@pytest.mark.parametrize(("precision", "engine"), ENGINES)
def test_lower_precision_masks_agree_with_float32(real_ckpt: Path, prepared: Path, precision: str, engine: str) -> None:
    fp32 = Predictor.from_checkpoint(real_ckpt, device="cpu")
    other = Predictor.from_checkpoint(real_ckpt, device="cpu", precision=precision, engine=engine)
    assert (other.precision, other.engine) == (precision, engine)
    same = total = person = 0
    largest = 0.0
    for path in sorted((prepared / "valid_images").iterdir()):
        image = read_image(path)
        a, b = fp32.logits([image])[0], other.logits([image])[0]
        largest = max(largest, float((a - b).abs().max()))
        same, total = same + int((a.argmax(0) == b.argmax(0)).sum()), total + a[0].numel()
        person += int(a.argmax(0).sum())
    print(
        f"{precision} by {engine}: {same / total:.4%} of valid pixels as in float32; largest logit change {largest:.4f}"
    )
    assert person > 0.02 * total  # the masks are not all background: the agreement means something
    assert largest > 1e-4  # the precision really changed the computation
    assert same / total >= 0.99


def test_int8_quantizes_a_copy_and_lists_what_it_quantized(ckpt: Path) -> None:
    from webdino_seg.models.checkpoint import load_model

    model, _ = load_model(ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = Predictor(
        model, (112, 112), (0.5,) * 3, (0.25,) * 3, ["background", "person"], precision="int8", engine="torch"
    )
    assert predictor.model is not model and predictor.precision == "int8"
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert predictor.quantized == linears and any(".attn.qkv" in n for n in linears)
    assert all(type(m) is not nn.Linear for n, m in predictor.model.named_modules() if n in linears)
    assert all(type(dict(model.named_modules())[n]) is nn.Linear for n in linears)  # the caller's model untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_choices_are_said_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert precision_mod.resolve("fp32", cpu) == ("fp32", "torch", "")
    monkeypatch.setattr(ov_engine, "available", lambda: True)
    chosen, engine, note = precision_mod.resolve("auto", cpu)
    assert (chosen, engine) == ("int8", "openvino") and note.startswith("precision: int8 by OpenVINO (auto:")
    with monkeypatch.context() as m:  # as on a CPU with native bf16, whatever this one has
        m.setattr(precision_mod, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
        assert precision_mod.resolve("bf16", cpu, "torch")[:2] == ("bf16", "torch")
    with pytest.raises(ValueError, match="float32 runs in PyTorch"):
        precision_mod.resolve("fp32", cpu, "openvino")
    monkeypatch.setattr(ov_engine, "available", lambda: False)
    chosen, engine, note = precision_mod.resolve("auto", cpu)
    assert (chosen, engine) == ("int8", "torch") and "pip install 'webdino-seg[openvino]'" in note
    with pytest.raises(ValueError, match=r"OpenVINO is not installed \(pip install 'webdino-seg\[openvino\]'\)"):
        precision_mod.resolve("int8", cpu, "openvino")
    monkeypatch.setattr(precision_mod, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ValueError, match="no native bf16"):
        precision_mod.resolve("bf16", cpu)
    with pytest.raises(ValueError, match="is for the CPU"):
        precision_mod.resolve("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="use one of auto, fp32, bf16, int8"):
        precision_mod.resolve("fp8", cpu)
    with pytest.raises(ValueError, match="use one of auto, torch, openvino"):
        precision_mod.resolve("int8", cpu, "tensorrt")


def test_int8_linear_pads_to_whole_groups_and_keeps_the_weights() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(70, 5)
    q = ov_engine.Int8Linear(linear, group=32)
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == (5, 96) and q.pad == 26
    assert not q.qweight[:, 70:].any()  # the padding adds nothing
    dequantized = q.qweight[:, :70].float() * q.scale
    assert (dequantized - linear.weight).abs().max() <= q.scale.max() / 2 + 1e-7  # rounding, nothing more
    x = torch.randn(3, 70)
    assert torch.allclose(q(x), F.linear(x, dequantized, linear.bias), atol=1e-6)
    from types import SimpleNamespace

    widths = {1024: 1024, 1536: 512, 2688: 128, 64: 64, 4096: 1024}  # Web-DINO 300M, 1B, 2B, the tiny one, 7B
    assert {w: ov_engine.group_size(SimpleNamespace(backbone=SimpleNamespace(embed_dim=w))) for w in widths} == widths


@pytest.mark.slow  # several seconds: the default run stays under three minutes
@NEEDS_OPENVINO
def test_openvino_int8_quantizes_a_copy_and_runs_every_size(ckpt: Path) -> None:
    from webdino_seg.models.checkpoint import load_model

    model, _ = load_model(ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = Predictor(
        model,
        (112, 112),
        (0.5,) * 3,
        (0.25,) * 3,
        ["background", "person"],
        precision="int8",
        engine="openvino",
        tta=True,
    )
    lowered = predictor.model
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert predictor.quantized == linears and any(".attn.qkv" in n for n in linears)
    assert all(isinstance(lowered.graph.model.get_submodule(n), ov_engine.Int8Linear) for n in linears)
    assert lowered.config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 64  # the tiny backbone's width: whole rows
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    image = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    masks = predictor.predict_batch([image, image[:, ::-1]])  # a batch of 2, each through the compiled graph
    assert [m.shape for m in masks] == [(90, 130)] * 2
    assert set(lowered._compiled) == set(predictor.tta_sizes)  # one compiled graph per test-time size, no more
    x = torch.randn(2, 3, 112, 112)
    with torch.inference_mode():
        ref, out = model.eval()(x), lowered(x)
    assert out.shape == ref.shape and float((out - ref).abs().max()) < 0.5 * float(ref.abs().max())
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & precision_mod.cpu_flags():
        assert float((out - ref).abs().max()) > 1e-4  # int8 arithmetic really ran: not float32's result
    # else OpenVINO computes these layers in float32 on this CPU (no VNNI: an AVX2-only AMD EPYC gave 3e-7 off)


@pytest.mark.slow  # several seconds: the default run stays under three minutes
def test_predict_and_evaluate_with_int8(ckpt: Path, prepared: Path, tmp_path: Path, capsys) -> None:
    import json

    images = prepared / "valid_images"
    assert (
        main(
            [
                "predict",
                "--input",
                str(images),
                "--model",
                str(ckpt),
                "--out",
                str(tmp_path / "p"),
                "--precision",
                "auto",
                "--debug",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    engine = "OpenVINO" if ov_engine.available() else "PyTorch"
    assert f"precision: int8 by {engine} (auto:" in err and "Linear layers quantized: backbone.blocks.0.attn.qkv" in err
    assert len(list((tmp_path / "p").glob("*_mask.png"))) == len(list(images.iterdir()))
    from PIL import Image

    for png in (tmp_path / "p").glob("*.png"):  # masks and overlays say the precision they were computed in
        assert Image.open(png).text["Precision"] == "int8", png
        assert Image.open(png).text["Engine"] == ("openvino" if ov_engine.available() else "torch"), png
    out = tmp_path / "e.json"
    assert (
        main(["evaluate", "--data", str(prepared), "--model", str(ckpt), "--out", str(out), "--precision", "int8"]) == 0
    )
    report = json.loads(out.read_text())
    assert report["precision"] == "int8" and report["engine"] in ("openvino", "torch") and 0 < report["miou"] < 1
    assert (
        main(
            [
                "predict",
                "--input",
                str(images),
                "--model",
                str(ckpt),
                "--out",
                str(tmp_path / "never"),
                "--precision",
                "fp32",
                "--engine",
                "openvino",
            ]
        )
        == 2
    )
    assert "float32 runs in PyTorch" in capsys.readouterr().err and not (tmp_path / "never").exists()
    assert np.isfinite(report["miou"])


def test_threads_are_set_once_for_the_model_and_the_codecs(
    ckpt: Path, prepared: Path, test_video: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import av

    from webdino_seg.utils import runtime

    before = torch.get_num_threads()
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it before anything is made
        main(
            [
                "predict",
                "--input",
                str(prepared / "valid_images"),
                "--model",
                str(ckpt),
                "--out",
                str(tmp_path / "bad"),
                "--threads",
                "0",
            ]
        )
    assert exit_info.value.code == 2 and "--threads" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    streams: list = []
    real_add_stream = av.container.OutputContainer.add_stream

    def add_stream(self, *args, **kwargs):
        streams.append(real_add_stream(self, *args, **kwargs))
        return streams[-1]

    monkeypatch.setattr(av.container.OutputContainer, "add_stream", add_stream)
    try:
        assert (
            main(
                [
                    "video",
                    "--input",
                    str(test_video),
                    "--model",
                    str(ckpt),
                    "--out",
                    str(tmp_path / "v.mp4"),
                    "--max-frames",
                    "4",
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
        assert torch.get_num_threads() == 1 and [s.codec_context.thread_count for s in streams] == [1]
        with av.open(str(tmp_path / "v.mp4")) as video:
            assert video.metadata["comment"] == "webdino-seg video; precision fp32"
        assert (
            main(
                [
                    "predict",
                    "--input",
                    str(prepared / "valid_images"),
                    "--model",
                    str(ckpt),
                    "--out",
                    str(tmp_path / "p"),
                    "--threads",
                    "2",
                ]
            )
            == 0
        )
        assert torch.get_num_threads() == 2 and len(list((tmp_path / "p").glob("*_mask.png"))) > 0
    finally:
        torch.set_num_threads(before)
    assert runtime.codec_threads(1) == runtime.codec_threads(2) == 1 and runtime.codec_threads(16) == 4
    assert runtime.usable_cores() >= 1


@NEEDS_OPENVINO
@pytest.mark.slow
@pytest.mark.parametrize("head", ["linear4", "multilayer", "guided"])
def test_openvino_int8_runs_every_head(head: str) -> None:
    """The heads that read 4 layers or the image export and agree with float32 too (simple: the tests above)."""
    from webdino_seg.models.builder import create_backbone
    from webdino_seg.models.heads import create_head
    from webdino_seg.models.segmentation import SegmentationModel

    torch.manual_seed(0)
    # trained-like LayerScale, so that quantizing the blocks changes something
    backbone = create_backbone("webdino-tiny", weights="random", layerscale_init=1.0).eval()
    model = SegmentationModel(backbone, create_head(head, backbone.embed_dim, 3)).eval()
    x = torch.randn(2, 3, 112, 140, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
        out = ov_engine.OpenVinoModel(model, "int8", precision_mod.native_bf16())(x)
        fp32 = ov_engine.OpenVinoModel(model, "fp32", False)(x)
    # int8 really ran: far further from PyTorch than OpenVINO's own float32 is (a fixed bound fails where the head's
    # logits are small: multilayer gave 6.7e-5 on one CI machine)
    off, float_off = float((out - ref).abs().max()), float((fp32 - ref).abs().max())
    assert out.shape == ref.shape and off > 10 * float_off, (off, float_off)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.98
