"""Preparing Penn-Fudan, reading image/mask pairs, and seeded augmentation, on the real images."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_subset
from webdino_seg.app.cli import main
from webdino_seg.data.augment import eval_transform, train_transform
from webdino_seg.data.datasets import DataError, SegmentationDataset
from webdino_seg.data.images import ImageError, read_mask
from webdino_seg.data.pennfudan import prepare_pennfudan
from webdino_seg.models.variants import IMAGENET_MEAN, IMAGENET_STD


@pytest.mark.fulldata
def test_prepare_full_set(prepared_full: Path, pennfudan_full: Path) -> None:
    split = json.loads((prepared_full / "split.json").read_text())
    assert len(split["train"]) == 146 and len(split["valid"]) == 24
    assert not set(split["train"]) & set(split["valid"])
    assert len(list((prepared_full / "train_images").iterdir())) == 146
    stem = Path(split["valid"][0]).stem
    mask = np.asarray(Image.open(prepared_full / "valid_masks" / f"{stem}.png"))
    original = np.asarray(Image.open(pennfudan_full / "PedMasks" / f"{stem}_mask.png"))
    assert set(np.unique(mask)) == {0, 1} and original.max() >= 1
    assert np.array_equal(mask, (original > 0).astype(np.uint8))


def test_prepare_from_zip_same_split(pennfudan: Path, tmp_path: Path, prepared: Path) -> None:
    archive = tmp_path / "PennFudanPed.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for sub in ("PNGImages", "PedMasks"):
            for f in sorted((pennfudan / sub).iterdir()):
                zf.write(f, f"PennFudanPed/{sub}/{f.name}")
    assert main(["prepare-data", "--source", str(archive), "--out", str(tmp_path / "out"), "--valid-count", "6"]) == 0
    a = json.loads((tmp_path / "out" / "split.json").read_text())
    b = json.loads((prepared / "split.json").read_text())
    assert a["train"] == b["train"] and a["valid"] == b["valid"]
    # a non-empty output folder is refused, and left as it was
    assert main(["prepare-data", "--source", str(archive), "--out", str(tmp_path / "out")]) == 2
    assert json.loads((tmp_path / "out" / "split.json").read_text()) == a


def test_prepare_bad_sources(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNGImages/ folder"):
        prepare_pennfudan(tmp_path / "empty", tmp_path / "o1")
    (tmp_path / "fake.zip").write_text("not a zip")
    assert main(["prepare-data", "--source", str(tmp_path / "fake.zip"), "--out", str(tmp_path / "o2")]) == 2
    assert "fake.zip: not a zip file" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_mask_modes(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2], [255, 3, 0]], np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", "binary").tolist() == [[0, 1, 1], [1, 1, 0]]
    assert read_mask(tmp_path / "m.png", "instances").tolist() == [[0, 1, 1], [255, 1, 0]]
    assert read_mask(tmp_path / "m.png", "ids").tolist() == values.tolist()
    with pytest.raises(ImageError, match=r"m\.png: mask has value\(s\) \[2, 3\] outside the 2 classes"):
        read_mask(tmp_path / "m.png", "ids", num_classes=2)


def _dataset(root: Path, augment: bool, **kw) -> SegmentationDataset:
    return SegmentationDataset(root, "train", (98, 126), IMAGENET_MEAN, IMAGENET_STD, augment=augment, seed=7, **kw)


def test_items_and_seeded_augmentation(prepared: Path, tmp_path: Path) -> None:
    root = make_subset(prepared, tmp_path / "sub", 6, 2)
    ds = _dataset(root, augment=True)
    x, y = ds[0]
    assert x.shape == (3, 98, 126) and x.dtype == torch.float32 and y.shape == (98, 126) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 1}
    draws = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        draws.append(torch.cat([ds[i][0].flatten() for i in range(len(ds))]))
    ds.set_epoch(0)
    assert torch.equal(torch.cat([ds[i][0].flatten() for i in range(len(ds))]), draws[0])  # repeatable
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # but varies by epoch
    plain = _dataset(root, augment=False)
    xp, _ = plain[0]
    assert xp.shape == x.shape


def test_flip_moves_image_and_mask_together(prepared: Path, tmp_path: Path) -> None:
    root = make_subset(prepared, tmp_path / "sub", 1, 1)
    ds = _dataset(root, augment=True)
    plain = _dataset(root, augment=False)
    x0, y0 = plain[0]
    for epoch in range(40):  # find a draw that only flips (no rotation, brightness)
        ds.set_epoch(epoch)
        x, y = ds[0]
        if torch.equal(y, y0.flip(-1)) and torch.allclose(x, x0.flip(-1), atol=1e-6):
            return
    pytest.fail("no pure horizontal flip in 40 seeded draws; image and mask may not be transformed together")


def test_resized_masks_stay_aligned_with_their_images() -> None:
    """The mask is resized by pixel centres as the image is: an image painted from its own mask, resized with it
    to a size the original does not divide, still agrees with the mask (cv2's plain INTER_NEAREST shifts the mask
    by up to half a pixel: 6.7% of the first of these disagree; by centre: under 0.5%, the bilinear image's own
    rounding). Training resizes the same way before its random steps."""
    rng = np.random.default_rng(0)
    for _ in range(4):
        blocks = (rng.random((9, 13)) > 0.5).astype(np.uint8)
        mask = np.kron(blocks, np.ones((4, 4), np.uint8))[:37, :50]  # 37x50 -> 56x84: scales 1.51 and 1.68
        out = eval_transform((56, 84))(image=np.repeat(mask[..., None] * 255, 3, 2), mask=mask)
        disagree = ((out["image"][..., 0] > 127) != (out["mask"] == 1)).mean()
        assert disagree < 0.005, disagree
    assert repr(train_transform((56, 84)).transforms[0]) == repr(eval_transform((56, 84)).transforms[0])


def test_image_without_mask(prepared: Path, tmp_path: Path) -> None:
    root = make_subset(prepared, tmp_path / "sub", 3, 1)
    lonely = next((root / "train_images").iterdir())
    (root / "train_masks" / lonely.name).unlink()
    with pytest.raises(DataError, match=f"have no mask .*{lonely.name}"):
        _dataset(root, augment=False)
    with pytest.warns(UserWarning, match="no mask"):
        assert len(_dataset(root, augment=False, on_bad="skip")) == 2


def test_show_data_writes_grid(prepared: Path, tmp_path: Path) -> None:
    root = make_subset(prepared, tmp_path / "sub", 4, 1)
    assert main(["show-data", str(root), "--out", str(tmp_path / "grid.png"), "--count", "4"]) == 0
    with Image.open(tmp_path / "grid.png") as img:
        assert img.width > 600 and img.height > 200


def test_empty_split_folder(tmp_path: Path) -> None:
    for name in ("train_images", "train_masks"):
        (tmp_path / name).mkdir()
    with pytest.raises(DataError, match="train_images: no images"):
        _dataset(tmp_path, augment=False)
    shutil.rmtree(tmp_path / "train_masks")
    with pytest.raises(DataError, match="train_masks: mask folder not found"):
        _dataset(tmp_path, augment=False)


def test_download_data_from_local_server(pennfudan: Path, server, tmp_path: Path, capsys) -> None:
    base, _ = server
    archive = tmp_path / "srv" / "PennFudanPed.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for stem in ("FudanPed00001", "FudanPed00002", "PennPed00001"):
            zf.write(pennfudan / "PNGImages" / f"{stem}.png", f"PennFudanPed/PNGImages/{stem}.png")
            zf.write(pennfudan / "PedMasks" / f"{stem}_mask.png", f"PennFudanPed/PedMasks/{stem}_mask.png")
    from webdino_seg.utils.download import sha256_file

    url = f"{base}/PennFudanPed.zip"
    assert main(["download-data", "--url", url, "--out", str(tmp_path / "bad"), "--sha256", "0" * 64]) == 2
    assert "checksum mismatch" in capsys.readouterr().err and not (tmp_path / "bad" / "PennFudanPed.zip").exists()
    assert main(["download-data", "--url", url, "--out", str(tmp_path / "dl"), "--sha256", sha256_file(archive)]) == 0
    got = tmp_path / "dl" / "PennFudanPed.zip"
    assert sha256_file(got) == sha256_file(archive)
    assert main(["prepare-data", "--source", str(got), "--out", str(tmp_path / "prep"), "--valid-count", "1"]) == 0
    assert len(list((tmp_path / "prep" / "train_images").iterdir())) == 2
    (tmp_path / "srv" / "junk.zip").write_text("<html>not found</html>")
    assert main(["download-data", "--url", f"{base}/junk.zip", "--out", str(tmp_path / "j")]) == 2
    assert "not a zip" in capsys.readouterr().err
