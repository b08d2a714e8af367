"""The export-format table: `export` and model loading read one table; an OpenVINO IR saved to disk is run by
`predict --model model.xml` with the masks of the checkpoint it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE, cli_error
from webdino_seg.app.cli import main
from webdino_seg.inference.formats import FORMATS, choose, for_file
from webdino_seg.inference.names import EXPORT_FORMATS

pytest.importorskip("openvino")


def test_one_table_names_each_format_its_suffix_and_runtime() -> None:
    assert tuple(FORMATS) == EXPORT_FORMATS
    assert for_file("a/model.ONNX") is FORMATS["onnx"] and for_file("m.xml") is FORMATS["openvino"]
    assert for_file("best_model_iou.pth") is None
    assert choose(None, "m.xml") is FORMATS["openvino"] and choose(None, "m.onnx") is FORMATS["onnx"]
    with pytest.raises(ValueError, match=r"--format openvino writes a \.xml file; --out m\.onnx is not one"):
        choose("openvino", "m.onnx")
    for fmt in FORMATS.values():
        assert callable(fmt.export())  # each entry's exporter exists where the table says


@pytest.mark.slow  # several seconds: the default run stays under three minutes
def test_an_openvino_ir_on_disk_predicts_the_masks_of_its_checkpoint(ckpt: Path, tmp_path: Path, capsys) -> None:
    xml = tmp_path / "model.xml"
    assert main(["export", "--model", str(ckpt), "--out", str(xml)]) == 0  # the suffix chooses the format
    said = capsys.readouterr().out
    assert "OpenVINO vs PyTorch: max abs logit difference" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]  # no temp folder left
    images = str(SAMPLE / "valid_images")
    assert main(["predict", "--input", images, "--model", str(ckpt), "--out", str(tmp_path / "pth")]) == 0
    assert main(["predict", "--input", images, "--model", str(xml), "--out", str(tmp_path / "ir")]) == 0
    masks = sorted((tmp_path / "pth").glob("*_mask.png"))
    assert len(masks) == 4
    for mask in masks:
        a, b = np.asarray(Image.open(mask)), np.asarray(Image.open(tmp_path / "ir" / mask.name))
        assert (a != b).mean() < 1e-4, mask.name
    report = tmp_path / "scores.json"
    assert main(["evaluate", "--data", str(SAMPLE), "--model", str(xml), "--out", str(report)]) == 0
    assert main(["export", "--model", str(ckpt), "--out", str(xml)]) == 0  # its own earlier export is replaced
    cli_error(
        ["predict", "--input", images, "--model", str(xml), "--imgsz", "112", "112"], capsys, "exported at 224x224"
    )
    cli_error(["export", "--model", str(ckpt), "--out", str(xml), "--dynamic"], capsys, "has a batch of 1")
    (tmp_path / "other.xml").write_text("<net/>")
    (tmp_path / "other.bin").write_bytes(b"")
    cli_error(["predict", "--input", images, "--model", str(tmp_path / "other.xml")], capsys, "other.xml", "not an")
    cli_error(["export", "--model", str(ckpt), "--out", str(tmp_path / "other.xml")], capsys, "did not write")


def test_an_int8_openvino_ir_says_its_precision(ckpt: Path, tmp_path: Path, capsys) -> None:
    xml = tmp_path / "int8.xml"
    assert main(["export", "--model", str(ckpt), "--format", "openvino", "--out", str(xml), "--int8"]) == 0
    assert "int8 weights" in capsys.readouterr().out
    images = str(SAMPLE / "valid_images")
    assert main(["predict", "--input", images, "--model", str(xml), "--out", str(tmp_path / "ir")]) == 0
    assert "precision: int8 by openvino" in capsys.readouterr().err
    assert len(list((tmp_path / "ir").glob("*_mask.png"))) == 4
