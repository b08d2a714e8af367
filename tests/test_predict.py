"""Image and video inference with a tiny model trained in the tests, on real images and the real video."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES, make_subset, reference_mask, tiny_config
from webdino_seg.app.cli import main
from webdino_seg.engine.train import train
from webdino_seg.inference.predictor import Predictor
from webdino_seg.models.checkpoint import load_model
from webdino_seg.models.weights.errors import WeightsError
from webdino_seg.utils.overlay import overlay


def test_predict_folder_writes_overlays_and_masks(ckpt: Path, pennfudan: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    names = sorted((pennfudan / "PNGImages").iterdir())[:3]
    for p in names:
        shutil.copy(p, src / p.name)
    Image.open(names[0]).crop((0, 0, 251, 333)).save(src / "odd_size.png")  # not a multiple of 14
    assert main(["predict", "--input", str(src), "--model", str(ckpt), "--out", str(tmp_path / "out")]) == 0
    for p in [*names, src / "odd_size.png"]:
        image = np.asarray(Image.open(src / p.name).convert("RGB"))
        mask = np.asarray(Image.open(tmp_path / "out" / f"{p.stem}_mask.png"))
        with Image.open(tmp_path / "out" / f"{p.stem}_overlay.png") as ov:
            assert ov.size == (image.shape[1], image.shape[0]) and ov.mode == "RGB"
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 1}
        assert (mask != reference_mask(*load_model(ckpt), image)).mean() <= 0.001  # independent: OpenCV resizes


def test_predict_glob_and_single_file(ckpt: Path, pennfudan: Path, tmp_path: Path) -> None:
    pattern = str(pennfudan / "PNGImages" / "PennPed0001[06].png")
    assert main(["predict", "--input", pattern, "--model", str(ckpt), "--out", str(tmp_path / "g")]) == 0
    assert len(list((tmp_path / "g").glob("*_mask.png"))) == 2
    one = pennfudan / "PNGImages" / "FudanPed00010.png"
    assert (
        main(
            [
                "predict",
                "--input",
                str(one),
                "--model",
                str(ckpt),
                "--out",
                str(tmp_path / "s"),
                "--imgsz",
                "112",
                "140",
            ]
        )
        == 0
    )
    assert (tmp_path / "s" / "FudanPed00010_overlay.png").exists()


def test_predictor_api_numpy_pil_batch(ckpt: Path, pennfudan: Path) -> None:
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    paths = sorted((pennfudan / "PNGImages").iterdir())[:2]
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(img.convert("RGB")) for img in pil]
    single = predictor.predict(pil[0])
    assert single.shape == arrays[0].shape[:2] and single.dtype == np.uint8
    batch = predictor.predict_batch(arrays)
    assert np.array_equal(batch[0], single) and batch[1].shape == arrays[1].shape[:2]
    assert np.array_equal(predictor.predict(np.asarray(pil[0].convert("L"))).shape, single.shape)


def test_exif_rotated_jpeg_keeps_display_orientation(ckpt: Path, pennfudan: Path, tmp_path: Path) -> None:
    img = Image.open(pennfudan / "PNGImages" / "FudanPed00001.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert (
        main(["predict", "--input", str(tmp_path / "rotated.jpg"), "--model", str(ckpt), "--out", str(tmp_path / "o")])
        == 0
    )
    mask = np.asarray(Image.open(tmp_path / "o" / "rotated_mask.png"))
    assert mask.shape == (img.width, img.height)  # display orientation, not the stored one


def test_video_first_frames(ckpt: Path, test_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    assert (
        main(
            [
                "video",
                "--input",
                str(test_video),
                "--model",
                str(ckpt),
                "--max-frames",
                "12",
                "--out",
                str(out),
                "--batch",
                "5",
            ]
        )
        == 0
    )
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (768, 432)
        assert stream.average_rate == 10
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 12
    assert frames[0].shape == (432, 768, 3)
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed into place
    # every written frame is the overlay of the model's mask on that input frame (to H.264's loss)
    with av.open(str(test_video)) as container:
        inputs = [f.to_ndarray(format="rgb24") for f in itertools.islice(container.decode(video=0), 12)]
    model, meta = load_model(ckpt)
    below_label = (slice(80, None), slice(None))  # the frame-rate label sits in the top-left corner
    for frame_in, frame_out in zip(inputs, frames, strict=True):
        mask = reference_mask(model, meta, frame_in)
        fg = (mask == 1)[below_label]
        assert fg.sum() > 200  # the check below must see some person pixels
        expected = overlay(frame_in, mask)[below_label].astype(np.float32)
        got = frame_out[below_label].astype(np.float32)
        raw = frame_in[below_label].astype(np.float32)
        assert np.abs(got - expected)[fg].mean() < 6  # matches the overlay where the mask is ...
        assert np.abs(got - raw)[fg].mean() > 4 * np.abs(got - expected)[fg].mean()  # ... not the plain frame
        assert np.abs(got - expected)[~fg].mean() < 6


def test_video_errors(ckpt: Path, test_video: Path, tmp_path: Path, capsys) -> None:
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(test_video.read_bytes()[:60_000])  # the index (moov) comes first
    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height = 64, 64
    for bad in (truncated, empty, tmp_path / "missing.mp4"):
        out = tmp_path / f"out_{bad.stem}.mp4"
        code = main(["video", "--input", str(bad), "--model", str(ckpt), "--out", str(out)])
        err = capsys.readouterr().err
        if bad is truncated:  # the frames that are there are segmented, and the early stop is reported
            assert code == 0 and "truncated" in err
            with av.open(str(out)) as container:
                assert 0 < sum(1 for _ in container.decode(video=0)) < 60
            continue
        assert code == 2 and bad.name in err and "Traceback" not in err
        assert not out.exists() and not list(tmp_path.glob(".out_*"))


def test_checkpoint_names_missing_backbone_weights(prepared: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w" / "tiny.pth"
    weights.parent.mkdir()
    shutil.copy(FIXTURES / "tiny_official.pth", weights)
    data = make_subset(prepared, tmp_path / "d", 4, 2)
    run = train(
        tiny_config(data, tmp_path / "run", weights=str(weights), imgsz=(56, 56), epochs=1, cache_views=1),
        log=lambda *_: None,
    )
    model_path = run / "final_model.pth"
    Predictor.from_checkpoint(model_path, device="cpu")  # found where training found it
    moved = tmp_path / "moved.pth"
    weights.rename(moved)
    with pytest.raises(FileNotFoundError, match=r"needs the backbone weights .*tiny\.pth .*--weights"):
        Predictor.from_checkpoint(model_path, device="cpu")
    assert Predictor.from_checkpoint(model_path, device="cpu", weights=str(moved)).predict(
        np.zeros((30, 40, 3), np.uint8)
    ).shape == (30, 40)
    with pytest.raises(WeightsError, match="sha256"):
        other = tmp_path / "other.pth"
        sd = torch.load(moved, weights_only=True)
        sd["norm.bias"] = sd["norm.bias"] + 1
        torch.save(sd, other)
        Predictor.from_checkpoint(model_path, device="cpu", weights=str(other))
