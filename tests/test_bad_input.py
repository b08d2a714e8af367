"""Bad input everywhere: clear one-line errors with exit code 2, odd-but-valid images that must work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from conftest import FIXTURES, Evil, cli_error, huge_png, make_subset, reference_mask, tiny_train_cli
from webdino_seg.app.cli import main
from webdino_seg.data.datasets import SegmentationDataset
from webdino_seg.data.images import ImageError, read_image, read_mask
from webdino_seg.models.variants import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def photo(pennfudan: Path) -> Image.Image:
    return Image.open(pennfudan / "PNGImages" / "FudanPed00001.png").convert("RGB")


@pytest.mark.parametrize("kind", ["gray", "rgba", "16bit", "palette", "cmyk"])
def test_unusual_image_modes_just_work(photo: Image.Image, tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.{'jpg' if kind == 'cmyk' else 'png'}"
    if kind == "gray":
        photo.convert("L").save(path)
    elif kind == "rgba":
        photo.convert("RGBA").save(path)
    elif kind == "16bit":
        Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257).save(path)
    elif kind == "palette":
        photo.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    else:
        photo.convert("CMYK").save(path, quality=95)
    image = read_image(path)
    assert image.shape == (photo.height, photo.width, 3) and image.dtype == np.uint8
    reference = np.asarray(photo.convert("L" if kind in ("gray", "16bit") else "RGB"), dtype=np.float32)
    got = image.astype(np.float32).mean(axis=2) if kind in ("gray", "16bit") else image.astype(np.float32)
    assert np.abs(got - reference).mean() < 12  # the same picture, not a blank or scrambled one


def test_exif_rotated_training_pair_keeps_mask_aligned(photo: Image.Image, pennfudan: Path, tmp_path: Path) -> None:
    mask = read_mask(pennfudan / "PedMasks" / "FudanPed00001_mask.png", "binary")
    root = tmp_path / "d"
    for split in ("train", "valid"):
        (root / f"{split}_images").mkdir(parents=True)
        (root / f"{split}_masks").mkdir(parents=True)
    # the photo is stored rotated by 90 degrees with an EXIF tag saying how to display it; the mask is drawn upright
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.transpose(Image.Transpose.ROTATE_90).save(root / "train_images" / "a.jpg", exif=exif, quality=95)
    Image.fromarray(mask).save(root / "train_masks" / "a.png")
    ds = SegmentationDataset(root, "train", (322, 252), IMAGENET_MEAN, IMAGENET_STD)
    sample = ds.load(ds.pairs[0])
    assert sample.image.shape[:2] == mask.shape
    person = sample.image[mask == 1].astype(float).mean()
    assert abs(person - np.asarray(photo)[mask == 1].astype(float).mean()) < 8


@pytest.mark.parametrize("kind", ["zero", "truncated_png", "truncated_jpg", "text", "huge"])
def test_broken_images_are_named(photo: Image.Image, tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.{'jpg' if kind == 'truncated_jpg' else 'png'}"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated_png":
        photo.save(path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "truncated_jpg":
        photo.save(path, quality=90)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "text":
        path.write_text("hello, I am not a picture")
    else:
        huge_png(path)
    with pytest.raises(ImageError, match=path.name):
        read_image(path)


def test_bad_dataset_items_fail_or_skip(prepared: Path, tmp_path: Path, capsys) -> None:
    data = make_subset(prepared, tmp_path / "d", 4, 2)
    images = sorted((data / "train_images").iterdir())
    images[0].write_bytes(b"")  # zero-byte image
    Image.new("L", (10, 10)).save(data / "train_masks" / images[1].name)  # size mismatch
    base = tiny_train_cli(data, tmp_path / "run")
    err = cli_error(base, capsys, images[0].name)
    assert "empty file" in err
    with pytest.warns(UserWarning, match="skipping"):
        assert main([*base, "--skip-bad"]) == 0
    assert (tmp_path / "run" / "final_model.pth").exists()


def test_mask_values_outside_classes(prepared: Path, tmp_path: Path, capsys) -> None:
    data = make_subset(prepared, tmp_path / "d", 2, 1)
    mask = next((data / "valid_masks").iterdir())
    Image.fromarray((read_mask(mask) * 7).astype(np.uint8)).save(mask)  # instance-like ids read as class ids
    cli_error(
        tiny_train_cli(data, tmp_path / "r", "--cache-views", "1"),
        capsys,
        mask.name,
        "outside the 2 classes",
        "--mask-mode binary",
    )


def test_cli_input_errors(prepared: Path, tmp_path: Path, trained_run: Path, capsys) -> None:
    ckpt = str(trained_run / "best_model_iou.pth")
    (tmp_path / "empty").mkdir()
    cli_error(["train", "--data", str(tmp_path / "nope")], capsys, "nope", "folder not found")
    cli_error(["train", "--data", str(prepared), "--imgsz", "650", "644"], capsys, "use 644 or 658")
    cli_error(
        ["prepare-data", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys, "no PNGImages/"
    )
    cli_error(["predict", "--input", str(tmp_path / "empty"), "--model", ckpt], capsys, "no images found")
    huge_png(tmp_path / "huge.png")
    cli_error(
        ["predict", "--input", str(tmp_path / "huge.png"), "--model", ckpt, "--out", str(tmp_path / "p")],
        capsys,
        "huge.png",
        "400,000,000 pixels",
        "256 MP",
    )
    cli_error(["evaluate", "--data", str(tmp_path / "empty"), "--model", ckpt], capsys, "valid_images")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    cli_error(
        ["predict", "--input", str(tmp_path), "--model", str(junk)], capsys, "junk.pth", "not a loadable checkpoint"
    )
    cli_error(
        ["predict", "--input", str(tmp_path), "--model", str(FIXTURES / "tiny_official.pth")],
        capsys,
        "not a webdino-seg model checkpoint",
    )
    cli_error(["video", "--input", str(tmp_path / "none.mp4"), "--model", ckpt], capsys, "none.mp4", "not found")


def test_cli_weights_errors(prepared: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = make_subset(prepared, tmp_path / "d", 2, 1)
    base = [
        "train",
        "--data",
        str(data),
        "--imgsz",
        "56",
        "56",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--out",
        str(tmp_path / "r"),
    ]
    cli_error(
        [*base, "--arch", "webdino-300m", "--weights", str(FIXTURES / "tiny_official.pth")],
        capsys,
        "shape mismatch",
        "looks like webdino-tiny",
    )
    cli_error(
        [*base, "--arch", "webdino-tiny", "--weights", str(tmp_path / "missing.pth")],
        capsys,
        "weights not found",
        "missing.pth",
    )
    cli_error(
        [*base, "--arch", "webdino-tiny", "--weights", "http://127.0.0.1:9/w.pth"],
        capsys,
        "cannot download http://127.0.0.1:9/w.pth",
    )
    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    cli_error([*base, "--arch", "webdino-tiny", "--weights", str(evil)], capsys, "refused to load")
    assert not (tmp_path / "PWNED").exists()


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 255)))
def test_mask_modes_property(values: np.ndarray) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.png"
        Image.fromarray(values).save(path)
        binary = read_mask(path, "binary")
        instances = read_mask(path, "instances")
        ids = read_mask(path, "ids")
    assert np.array_equal(ids, values)
    assert set(np.unique(binary)) <= {0, 1} and np.array_equal(binary == 0, values == 0)
    assert np.array_equal(instances == 255, values == 255)
    assert np.array_equal(instances == 0, values == 0)
    assert set(np.unique(instances)) <= {0, 1, 255}


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 90), st.integers(1, 90), st.sampled_from([(28, 28), (42, 70), (56, 28)]))
def test_predictions_come_back_at_the_input_size(height: int, width: int, imgsz: tuple[int, int]) -> None:
    from webdino_seg import create_model
    from webdino_seg.inference.predictor import Predictor

    torch.manual_seed(0)
    model = create_model("webdino-tiny", num_classes=3, seed=0)
    predictor = Predictor(model, imgsz, IMAGENET_MEAN, IMAGENET_STD, ["a", "b", "c"], device="cpu")
    image = np.random.default_rng(height * 100 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = predictor.predict(image)
    assert mask.shape == (height, width) and mask.dtype == np.uint8 and mask.max() < 3
    # resize, normalisation and upsampling computed independently (OpenCV, NumPy): equal but for float near-ties
    meta = {"imgsz": imgsz, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    expected = reference_mask(model, meta, image)
    assert (mask != expected).mean() <= 0.002


def test_predict_skip_bad(trained_run: Path, pennfudan: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.png").write_bytes((pennfudan / "PNGImages" / "FudanPed00002.png").read_bytes())
    (src / "broken.png").write_bytes(b"")
    argv = ["predict", "--input", str(src), "--model", str(trained_run / "best_model_iou.pth"), "--out"]
    cli_error([*argv, str(tmp_path / "a")], capsys, "broken.png", "empty file")
    assert main([*argv, str(tmp_path / "b"), "--skip-bad"]) == 0
    assert "skipped" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["good_mask.png", "good_overlay.png"]


def test_a_checkpoint_whose_head_no_longer_fits_is_named(ckpt: Path, tmp_path: Path, capsys) -> None:
    """A head saved by another version (its layers renamed since) fails with the file and the keys, not torch's
    state-dict dump."""
    saved = torch.load(ckpt, weights_only=True)
    saved["head"] = {k.replace("decode.0", "decode.old"): v for k, v in saved["head"].items()}
    old = tmp_path / "old.pth"
    torch.save(saved, old)
    cli_error(
        [
            "predict",
            "--input",
            str(FIXTURES / "pennfudan-mini" / "images"),
            "--model",
            str(old),
            "--out",
            str(tmp_path / "p"),
        ],
        capsys,
        f"{old}: its 'simple' head does not fit this version's (missing "
        "decode.0.bias, decode.0.weight; unexpected decode.old.bias, decode.old.weight)",
    )
    assert not (tmp_path / "p").exists()


def test_a_mistyped_command_or_flag_names_the_nearest(capsys) -> None:
    import pytest

    from webdino_seg.app.cli import main

    for argv, hint in (
        (["trian"], "did you mean train?"),
        (["train", "--lrr", "3"], "did you mean --lr?"),
        (["evaluate", "--data", "d", "--model", "m", "--splt", "test"], "did you mean --split?"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().endswith(hint)
    with pytest.raises(SystemExit):
        main(["train", "--data", "d", "--frobnicate"])
    assert "did you mean" not in capsys.readouterr().err  # nothing near: nothing suggested
