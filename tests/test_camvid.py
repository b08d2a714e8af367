"""CamVid end to end (11 street classes, 11 = ignore): import, train with median-frequency weights, evaluate with
its report, predict and segment a clip made of its frames. Real data from ../shared/data/camvid."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from webdino_seg.app.cli import main

CLASSES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]


def _clip(frames: list[Path], path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        for frame in frames:
            image = np.asarray(Image.open(frame).convert("RGB"))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.mark.slow
@pytest.mark.fulldata
def test_camvid_end_to_end(camvid: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "camvid"
    assert (
        main(
            [
                "prepare-data",
                "--format",
                "folders",
                "--source",
                str(camvid),
                "--out",
                str(data),
                "--ignore-index",
                "11",
                "--class-names",
                *CLASSES,
            ]
        )
        == 0
    )
    assert len(list((data / "train_masks").iterdir())) == 367 and len(list((data / "valid_masks").iterdir())) == 101
    stored = np.asarray(Image.open(camvid / "valannot" / "0016E5_07959.png"))
    written = np.asarray(Image.open(data / "valid_masks" / "0016E5_07959.png"))
    assert (written[stored == 11] == 255).all() and (written[stored != 11] == stored[stored != 11]).all()
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--arch",
                "webdino-tiny",
                "--weights",
                "random",
                "--imgsz",
                "84",
                "112",
                "--epochs",
                "3",
                "--lr",
                "1e-3",
                "--workers",
                "0",
                "--cache-views",
                "1",
                "--class-weights",
                "median-freq",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    ckpt = torch.load(run / "best_model_iou.pth", weights_only=True)
    weights = dict(zip(CLASSES, ckpt["class_weights"], strict=True))
    assert "class weights (median frequency over the training split)" in out
    assert weights["Bicyclist"] > 5 * weights["Road"] and weights["Pedestrian"] > 5 * weights["Sky"]  # rare > common
    report = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(data),
                "--model",
                str(run / "best_model_iou.pth"),
                "--report",
                str(report),
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert list(scores["iou"]) == CLASSES and scores["images"] == 101
    assert scores["miou"] > scores["baseline"]["miou"] and scores["baseline"]["class"] == "Road"
    assert all(name in (report / "index.html").read_text() for name in CLASSES)
    assert (
        main(
            [
                "predict",
                "--input",
                str(data / "valid_images" / "0016E5_07959.jpg"),
                "--model",
                str(run / "best_model_iou.pth"),
                "--out",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    overlay = np.asarray(Image.open(tmp_path / "pred" / "0016E5_07959_overlay.png"))
    assert overlay.shape == (360, 480, 3) and (overlay[-40:, :100] == 255).all(-1).mean() > 0.3  # the legend's white
    clip = _clip(sorted((data / "valid_images").glob("0016E5_0*.jpg"))[:12], tmp_path / "clip.mp4")
    assert (
        main(
            [
                "video",
                "--input",
                str(clip),
                "--model",
                str(run / "best_model_iou.pth"),
                "--out",
                str(tmp_path / "clip_seg.mp4"),
            ]
        )
        == 0
    )
    with av.open(str(tmp_path / "clip_seg.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 12
