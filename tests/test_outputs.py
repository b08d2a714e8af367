"""Outputs people use: masks as 0/255 or in colour, per-class probabilities, a video without the frame-rate label,
and big photos segmented window by window (--tile) or noted when shrunk."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from webdino_seg.app.cli import main
from webdino_seg.inference import predictor as predictor_mod
from webdino_seg.inference.masks import check_mask_values
from webdino_seg.inference.predictor import Predictor


def _photos(pennfudan: Path, n: int = 2) -> list[Path]:
    return sorted((pennfudan / "PNGImages").iterdir())[:n]


def test_mask_values_and_probabilities(ckpt: Path, pennfudan: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for photo in _photos(pennfudan):
        (src / photo.name).write_bytes(photo.read_bytes())
    outs = {}
    for how in ("ids", "255", "color"):
        outs[how] = tmp_path / how
        assert (
            main(
                [
                    "predict",
                    "--input",
                    str(src),
                    "--model",
                    str(ckpt),
                    "--out",
                    str(outs[how]),
                    "--mask-values",
                    how,
                    *(["--save-probs"] if how == "ids" else []),
                ]
            )
            == 0
        )
    colors = Predictor.from_checkpoint(ckpt, device="cpu").colors
    for photo in _photos(pennfudan):
        ids = np.asarray(Image.open(outs["ids"] / f"{photo.stem}_mask.png"))
        assert ids.ndim == 2 and set(np.unique(ids)) <= {0, 1} and ids.any()
        assert np.array_equal(np.asarray(Image.open(outs["255"] / f"{photo.stem}_mask.png")), ids * 255)
        assert np.array_equal(np.asarray(Image.open(outs["color"] / f"{photo.stem}_mask.png")), colors[ids])
        with np.load(outs["ids"] / f"{photo.stem}_probs.npz") as npz:
            probs, names = npz["probs"], list(npz["class_names"])
        assert probs.dtype == np.uint8 and probs.shape == (2, *ids.shape) and names == ["background", "person"]
        assert np.abs(probs.astype(int).sum(0) - 255).max() <= 1  # probabilities sum to one
        assert (probs.argmax(0) == ids).mean() > 0.999  # the mask is their argmax (ties after rounding aside)
        assert not (outs["255"] / f"{photo.stem}_probs.npz").exists()
    # the probabilities are our own output: a second run replaces them without --overwrite
    assert main(["predict", "--input", str(src), "--model", str(ckpt), "--out", str(outs["ids"]), "--save-probs"]) == 0


def test_mask_values_255_is_for_two_classes() -> None:
    check_mask_values("255", 2)
    with pytest.raises(ValueError, match="--mask-values 255 is for two classes; this model has 3"):
        check_mask_values("255", 3)
    with pytest.raises(ValueError, match="use one of ids, 255, color"):
        check_mask_values("gray", 2)


def _first_frames(path: Path, n: int) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for _, f in zip(range(n), container.decode(video=0), strict=False)]


def test_video_without_the_fps_label(ckpt: Path, test_video: Path, tmp_path: Path) -> None:
    for name, extra in (("with", []), ("without", ["--no-fps-label"])):
        assert (
            main(
                [
                    "video",
                    "--input",
                    str(test_video),
                    "--model",
                    str(ckpt),
                    "--out",
                    str(tmp_path / f"{name}.mp4"),
                    "--max-frames",
                    "4",
                    *extra,
                ]
            )
            == 0
        )
    labelled, plain = _first_frames(tmp_path / "with.mp4", 4), _first_frames(tmp_path / "without.mp4", 4)
    for a, b in zip(labelled, plain, strict=True):
        corner = np.abs(a[:30, :200].astype(int) - b[:30, :200]).mean()
        rest = np.abs(a[100:].astype(int) - b[100:]).mean()
        assert corner > 20 and rest < 1.0, (corner, rest)  # only the label's box differs


def test_tiles_cover_the_image_and_one_window_equals_the_plain_prediction(ckpt: Path, pennfudan: Path) -> None:
    plain = Predictor.from_checkpoint(ckpt, device="cpu")
    tiled = Predictor.from_checkpoint(ckpt, device="cpu", tile=True)
    h, w = plain.imgsz
    photo = np.asarray(Image.open(_photos(pennfudan, 1)[0]).convert("RGB"))
    window = np.ascontiguousarray(photo[:h, :w])
    assert np.array_equal(tiled.predict(window), plain.predict(window))
    assert torch.equal(tiled.probabilities([window])[0], plain.probabilities([window])[0])
    big = np.ascontiguousarray(np.concatenate([photo, photo[:, ::-1]], 1))  # two photos side by side
    probs = tiled.probabilities([big])[0]
    assert probs.shape == (2, *big.shape[:2]) and torch.allclose(probs.sum(0), torch.ones(big.shape[:2]), atol=1e-5)
    assert not np.array_equal(tiled.predict(big), plain.predict(big))  # full-resolution windows see more detail
    assert predictor_mod._starts(10, 10) == [0] and predictor_mod._starts(500, 224) == [0, 149, 276]


def test_a_big_photo_is_noted_once_without_tile(ckpt: Path, pennfudan: Path, tmp_path: Path, capsys) -> None:
    photo = np.asarray(Image.open(_photos(pennfudan, 1)[0]).convert("RGB"))
    src = tmp_path / "in"
    src.mkdir()
    big = np.tile(photo, (2, 2, 1))  # about 700 x 900 for the model at 112 x 112: shrunk more than 4x
    for name in ("a.png", "b.png"):
        Image.fromarray(big).save(src / name)
    small = ["--model", str(ckpt), "--imgsz", "112", "112"]
    assert main(["predict", "--input", str(src), *small, "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert err.count("is shrunk") == 1 and "--tile segments it window by window" in err
    assert main(["predict", "--input", str(src / "a.png"), *small, "--out", str(tmp_path / "t"), "--tile"]) == 0
    assert "is shrunk" not in capsys.readouterr().err


def test_evaluate_with_tiles(ckpt: Path, prepared: Path, tmp_path: Path) -> None:
    import json

    for name, extra in (("plain", []), ("tiled", ["--tile"])):
        assert (
            main(
                [
                    "evaluate",
                    "--data",
                    str(prepared),
                    "--model",
                    str(ckpt),
                    "--out",
                    str(tmp_path / f"{name}.json"),
                    *extra,
                ]
            )
            == 0
        )
    plain, tiled = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "tiled"))
    assert plain["tile"] is False and tiled["tile"] is True
    assert 0 < tiled["miou"] < 1 and tiled["miou"] != plain["miou"]
