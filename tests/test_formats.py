"""Labels as datasets store them, and the formats labelling tools export, on small files written by hand the way
each tool writes them (where each format is described is said beside each test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import FIXTURES, cli_error
from webdino_seg.app.cli import main
from webdino_seg.data.formats.shapes import rle_decode
from webdino_seg.data.images import ImageError, read_mask
from webdino_seg.data.labels import Coding, read_classes_file
from webdino_seg.engine.losses import median_frequency_weights


def _image(path: Path, w: int = 20, h: int = 16, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(list(path.name.encode()))  # each name its own pixels
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def _masks(out: Path, split: str) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / f"{split}_masks").iterdir())}


# --- reading stored values -----------------------------------------------------------------------


def test_palette_png_is_read_as_indices(tmp_path: Path) -> None:
    """VOC stores palette PNGs: the index is the class, 255 the border (ignore)."""
    values = np.array([[0, 1, 15], [255, 20, 0]], np.uint8)
    img = Image.fromarray(values, mode="P")
    img.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
    img.save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", "ids", 21), values)


def test_ignore_index_reduce_labels_16_bit_and_negative(tmp_path: Path) -> None:
    camvid = np.array([[0, 3, 11], [10, 11, 2]], np.uint8)  # CamVid: 11 means ignore
    Image.fromarray(camvid).save(tmp_path / "camvid.png")
    np.testing.assert_array_equal(
        read_mask(tmp_path / "camvid.png", "ids", 11, Coding(ignore_index=11)), [[0, 3, 255], [10, 255, 2]]
    )
    with pytest.raises(ImageError, match=r"value\(s\) \[11\] outside the 11 classes.*--ignore-index N"):
        read_mask(tmp_path / "camvid.png", "ids", 11)
    ade = np.array([[0, 1, 150]], np.uint8)  # ADE20K: 0 is "other" (ignore), class k stored as k + 1
    Image.fromarray(ade).save(tmp_path / "ade.png")
    np.testing.assert_array_equal(
        read_mask(tmp_path / "ade.png", "ids", 150, Coding(reduce_labels=True)), [[255, 0, 149]]
    )
    deep = np.array([[0, 7, 65535]], np.uint16)  # 16-bit with 65535 as ignore
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    with pytest.raises(ImageError, match=r"mask value 65535 does not fit a class id.*--ignore-index 65535"):
        read_mask(tmp_path / "deep.png", "ids", 8)
    np.testing.assert_array_equal(read_mask(tmp_path / "deep.png", "ids", 8, Coding(ignore_index=65535)), [[0, 7, 255]])
    Image.fromarray(np.array([[0, -3]], np.int32), mode="I").save(tmp_path / "neg.tif")  # 32-bit signed
    with pytest.raises(ImageError, match="negative value"):
        read_mask(tmp_path / "neg.tif", "ids", 2)


def test_colour_coded_masks_need_and_use_the_palette(tmp_path: Path) -> None:
    colors = ((0, 0, 0), (128, 64, 128), (70, 70, 70))
    rgb = np.array([[colors[0], colors[1]], [colors[2], colors[1]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(ImageError, match=r"mode RGB.*classes\.json"):
        read_mask(tmp_path / "rgb.png", "ids", 3)
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png", "ids", 3, Coding(colors=colors)), [[0, 1], [2, 1]])
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(ImageError, match=r"1 pixel\(s\) have a colour that is no class's, e.g. RGB \(1, 2, 3\)"):
        read_mask(tmp_path / "odd.png", "ids", 3, Coding(colors=colors))


def test_jpeg_masks_are_refused_unless_binary(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "m.jpg", quality=90)
    with pytest.raises(ImageError, match="a JPEG mask: lossy compression"):
        read_mask(tmp_path / "m.jpg", "ids", 2)
    assert read_mask(tmp_path / "m.jpg", "binary").max() == 1


def test_median_frequency_weights_by_hand() -> None:
    """SegNet's definition: freq(c) = pixels of c / pixels of the images holding c; weight = median / freq."""
    counts = torch.tensor([60, 30, 10, 0])
    image_pixels = torch.tensor([100, 100, 50, 0])  # class 2 appears only in a 50-pixel image; class 3 nowhere
    freq = np.array([0.6, 0.3, 0.2])
    expected = np.median(freq) / freq
    np.testing.assert_allclose(median_frequency_weights(counts, image_pixels).numpy(), [*expected, 0.0], rtol=1e-6)


# --- importers -----------------------------------------------------------------------------------


def _rle_encode(mask: np.ndarray) -> str:
    """COCO's compressed RLE string (pycocotools' rleToString, maskApi.c), written here independently of the
    decoder under test: column-major runs, each delta-coded against the run two before, 5 bits per char."""
    flat = mask.T.ravel()
    counts, value, run = [], False, 0
    for pixel in flat:
        if bool(pixel) != value:
            counts.append(run)
            value, run = bool(pixel), 0
        run += 1
    counts.append(run)
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not (x == 0 and not ch & 0x10) and not (x == -1 and ch & 0x10)
            out.append(chr(ch + (0x20 if more else 0) + 48))
    return "".join(out)


def test_rle_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((9, 13)) < rng.random()
        np.testing.assert_array_equal(rle_decode({"size": [9, 13], "counts": _rle_encode(mask)}), mask)


def test_coco_polygons_rle_and_crowd(tmp_path: Path, capsys) -> None:
    """COCO instance format: cocodataset.org/#format-data (polygons as flat x,y lists; RLE uncompressed or as
    the compressed string; iscrowd regions)."""
    _image(tmp_path / "coco" / "images" / "a.jpg")
    _image(tmp_path / "coco" / "images" / "b.jpg")
    _image(tmp_path / "coco" / "images" / "c.jpg")
    dog = np.zeros((16, 20), bool)
    dog[2:6, 12:18] = True
    crowd = np.zeros((16, 20), bool)
    crowd[10:14, 0:4] = True
    runs = {"size": [16, 20], "counts": _rle_encode(crowd)}
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 20, "height": 16},
            {"id": 2, "file_name": "b.jpg", "width": 20, "height": 16},
            {"id": 3, "file_name": "c.jpg", "width": 20, "height": 16},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [[1, 1, 8, 1, 8, 8, 1, 8]]},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 7,
                "iscrowd": 0,
                "segmentation": {"size": [16, 20], "counts": _rle_encode(dog)},
            },
            {"id": 3, "image_id": 1, "category_id": 7, "iscrowd": 1, "segmentation": runs},
            {"id": 4, "image_id": 2, "category_id": 3, "iscrowd": 0, "segmentation": [[0, 0, 19, 0, 19, 15, 0, 15]]},
            {"id": 5, "image_id": 2, "category_id": 7, "iscrowd": 0, "segmentation": [[5, 5, 10, 5, 10, 10, 5, 10]]},
        ],
    }
    (tmp_path / "coco" / "instances.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert (
        main(
            [
                "prepare-data",
                "--format",
                "coco",
                "--source",
                str(tmp_path / "coco" / "instances.json"),
                "--out",
                str(out),
                "--valid-fraction",
                "0.34",
            ]
        )
        == 0
    )
    classes = read_classes_file(out)
    assert classes["names"] == ["background", "cat", "dog"] and classes["ignore_index"] == 255  # category id order
    masks = _masks(out, "train") | _masks(out, "valid")
    a, b = masks["a.png"], masks["b.png"]
    # polygons drawn as pycocotools draws them: a square from 1 to 8 covers pixels 1-7 (its area, 7 x 7)
    assert (a == 1).sum() == 49 and (a[1:8, 1:8] == 1).all() and (a[dog] == 2).all() and (a[crowd] == 255).all()
    assert a[15, 19] == 0
    assert (b[5:10, 5:10] == 2).all() and b[0, 0] == 1  # the later annotation is drawn over the earlier one
    assert not masks["c.png"].any()  # an image without annotations is all background
    assert len(_masks(out, "valid")) == 1 and "next: webdino-seg show-data" in capsys.readouterr().out


def test_yolo_segmentation(tmp_path: Path) -> None:
    """Ultralytics YOLO-seg: docs.ultralytics.com/datasets/segment/ (data.yaml; labels/<split>/<stem>.txt with
    'class x1 y1 x2 y2 ...' normalised to 0-1)."""
    root = tmp_path / "yolo"
    _image(root / "images" / "train" / "a.png")
    _image(root / "images" / "val" / "b.png")
    _image(root / "images" / "test" / "c.png")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("1 0.0 0.0 0.5 0.0 0.5 0.5 0.0 0.5\n0 0.75 0.5 0.1 0.2\n")
    config = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": {0: "person", 1: "car"},
    }
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["prepare-data", "--format", "yolo", "--source", str(root / "data.yaml"), "--out", str(out)]) == 0
    assert read_classes_file(out)["names"] == ["background", "person", "car"]
    a = _masks(out, "train")["a.png"]
    assert (a[1:7, 1:9] == 2).all()  # class 1 (car) -> 2, the top-left quarter
    assert a[8, 15] == 1 and a[2, 15] == 0  # the box (centre 0.75, 0.5; 0.1 x 0.2) -> person
    assert not _masks(out, "valid")["b.png"].any()  # no label file: nothing in it
    assert list(_masks(out, "test")) == ["c.png"]  # YOLO's test: key is the test split


def test_labelme_shapes(tmp_path: Path, capsys) -> None:
    """LabelMe: github.com/wkentaro/labelme (a JSON beside each image: imagePath, imageHeight, imageWidth, shapes
    with label, points, shape_type)."""
    root = tmp_path / "lm"
    for name in ("a", "b"):
        _image(root / f"{name}.jpg")
        shapes = [
            {"label": "road", "points": [[0, 10], [19, 10], [19, 15], [0, 15]], "shape_type": "polygon"},
            {"label": "car", "points": [[2, 2], [6, 5]], "shape_type": "rectangle"},
            {"label": "sign", "points": [[15, 4], [17, 4]], "shape_type": "circle"},
            {"label": "car", "points": [[0, 0], [19, 0]], "shape_type": "line"},
        ]
        (root / f"{name}.json").write_text(
            json.dumps(
                {
                    "version": "5.4.1",
                    "flags": {},
                    "shapes": shapes,
                    "imagePath": f"{name}.jpg",
                    "imageData": None,
                    "imageHeight": 16,
                    "imageWidth": 20,
                }
            )
        )
    out = tmp_path / "out"
    assert main(["prepare-data", "--format", "labelme", "--source", str(root), "--out", str(out)]) == 0
    assert "2 LabelMe shape(s) without area" in capsys.readouterr().out
    names = read_classes_file(out)["names"]
    assert names == ["background", "car", "road", "sign"]
    m = next(iter((_masks(out, "train") | _masks(out, "valid")).values()))
    assert (m[10:16] == 2).all() and (m[2:6, 2:7] == 1).all() and m[4, 16] == 3 and m[4, 12] == 0


def test_labelme_embedded_images_windows_paths_and_label_spellings(tmp_path: Path, capsys) -> None:
    """What LabelMe writes in the wild: the photo only inside the JSON (imageData), an imagePath written on
    Windows, and one label typed two ways."""
    import base64

    root = tmp_path / "lm"
    (root / "images").mkdir(parents=True)
    photo = _image(tmp_path / "elsewhere" / "inside.png")
    _image(root / "images" / "win.png")
    records = {
        "inside": {
            "imagePath": "inside.png",
            "imageData": base64.b64encode(photo.read_bytes()).decode(),
            "label": "Person ",
        },
        "win": {"imagePath": "..\\lm\\images\\win.png", "imageData": None, "label": "person"},
    }
    for name, rec in records.items():
        shapes = [{"label": rec["label"], "points": [[0, 0], [9, 0], [9, 7], [0, 7]], "shape_type": "polygon"}]
        (root / f"{name}.json").write_text(
            json.dumps(
                {
                    "shapes": shapes,
                    "imagePath": rec["imagePath"],
                    "imageData": rec["imageData"],
                    "imageHeight": 16,
                    "imageWidth": 20,
                }
            )
        )
    out = tmp_path / "out"
    assert main(["prepare-data", "--format", "labelme", "--source", str(root), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "LabelMe labels 'Person ', 'person' differ only in spaces or case: read as one class, 'Person'" in said
    assert read_classes_file(out)["names"] == ["background", "Person"]
    written = {p.name: p for s in ("train", "valid") for p in (out / f"{s}_images").iterdir()}
    assert sorted(written) == ["inside.png", "win.png"]
    assert written["inside.png"].read_bytes() == photo.read_bytes()  # the embedded file, as it was
    assert all((m[:8, :10] == 1).all() for m in (_masks(out, "train") | _masks(out, "valid")).values())


def test_voc_lists_and_palette(tmp_path: Path) -> None:
    """PASCAL VOC devkit: JPEGImages/, SegmentationClass/ (palette PNGs, 255 border), ImageSets/Segmentation."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for stem in ("2007_000001", "2007_000002"):
        _image(root / "JPEGImages" / f"{stem}.jpg")
        label = np.zeros((16, 20), np.uint8)
        label[4:12, 4:12] = 15  # person
        label[4, 4:12] = 255  # the border VOC draws around objects
        img = Image.fromarray(label, mode="P")
        img.putpalette([0] * 768)
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        img.save(root / "SegmentationClass" / f"{stem}.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000002\n")
    _image(root / "JPEGImages" / "2008_000009.jpg")  # VOC's public test list: images without label maps
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text("2008_000009\n")
    out = tmp_path / "out"
    assert main(["prepare-data", "--format", "voc", "--source", str(tmp_path / "VOCdevkit"), "--out", str(out)]) == 0
    assert not (out / "test_images").exists()  # nothing to score: left out
    classes = read_classes_file(out)
    assert len(classes["names"]) == 21 and classes["names"][15] == "person" and classes["colors"][15] == [192, 128, 128]
    train, valid = _masks(out, "train"), _masks(out, "valid")
    assert list(train) == ["2007_000001.png"] and list(valid) == ["2007_000002.png"]
    assert train["2007_000001.png"][4, 5] == 255 and train["2007_000001.png"][6, 6] == 15


def test_folders_with_an_ignore_value_and_nothing_overwritten(tmp_path: Path, capsys) -> None:
    """CamVid as the SegNet tutorial publishes it: train/ + trainannot/, val/ + valannot/, 11 = ignore."""
    root = tmp_path / "camvid"
    for split in ("train", "val"):
        for i in range(2):
            _image(root / split / f"{split}{i}.jpg", fmt="JPEG")
            label = np.full((16, 20), 3, np.uint8)
            label[:4] = 11
            label[8:, :5] = i + 1
            (root / f"{split}annot").mkdir(exist_ok=True)
            Image.fromarray(label).save(root / f"{split}annot" / f"{split}{i}.png")
    out = tmp_path / "out"
    names = ["Sky", "Building", "Pole", "Road"]
    argv = [
        "prepare-data",
        "--format",
        "folders",
        "--source",
        str(root),
        "--out",
        str(out),
        "--ignore-index",
        "11",
        "--class-names",
        *names,
    ]
    assert main(argv) == 0
    assert read_classes_file(out)["names"] == names
    m = _masks(out, "valid")["val1.png"]
    assert (m[:4] == 255).all() and (m[8:, :5] == 2).all() and m[5, 10] == 3
    split = json.loads((out / "split.json").read_text())
    assert main(argv) == 0  # into its own earlier import it adds (nothing new here): every image keeps its split
    assert json.loads((out / "split.json").read_text()) == split
    assert "adding to the earlier import in" in capsys.readouterr().out
    (out / "notes.txt").write_text("mine")  # a folder that holds anything else is the user's: refused
    cli_error(argv, capsys, "output folder exists and is not empty")  # nothing of the user's is replaced
    assert (out / "notes.txt").read_text() == "mine"
    cli_error(
        [*argv[:5], "--out", str(tmp_path / "o2"), "--class-names", "Sky", "Building"], capsys, "outside the 2 classes"
    )
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2*"))  # no half-written folder


def test_imported_classes_reach_training_and_evaluation(tmp_path: Path) -> None:
    """classes.json gives train its names and colours; checkpoints carry them to evaluate's report."""
    root = tmp_path / "data"
    for split, n in (("train", 4), ("valid", 2)):
        for i in range(n):
            _image(root / f"{split}_images" / f"{split}{i}.png", 28, 28)
            label = np.zeros((28, 28), np.uint8)
            label[:10] = 1
            label[20:, 10:] = 2
            label[0, 0] = 255
            (root / f"{split}_masks").mkdir(exist_ok=True)
            Image.fromarray(label).save(root / f"{split}_masks" / f"{split}{i}.png")
    (root / "classes.json").write_text(
        json.dumps({"names": ["sky", "road", "car"], "colors": [[10, 20, 30], [40, 50, 60], [70, 80, 90]]})
    )
    run = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(root),
        "--out",
        str(run),
        "--arch",
        "webdino-tiny",
        "--weights",
        "random",
        "--imgsz",
        "28",
        "28",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--class-weights",
        "median-freq",
    ]
    assert main(argv) == 0
    ckpt = torch.load(run / "best_model_iou.pth", weights_only=True)
    assert ckpt["class_names"] == ["sky", "road", "car"] and ckpt["class_colors"][2] == [70, 80, 90]
    assert ckpt["class_weights"] is not None and len(ckpt["class_weights"]) == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["class_weights"] == "median-freq"
    report = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(root),
                "--model",
                str(run / "best_model_iou.pth"),
                "--report",
                str(report),
                "--out",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    page = (report / "index.html").read_text()
    assert "rgb(70, 80, 90)" in page and "car" in page


def test_pairs_that_cannot_be_told_apart_and_masks_with_nothing_labelled(tmp_path: Path, capsys) -> None:
    root = tmp_path / "d"
    for split in ("train", "valid"):
        for i in range(2):
            _image(root / f"{split}_images" / f"{split}{i}.png")
            (root / f"{split}_masks").mkdir(exist_ok=True)
            Image.fromarray(np.full((16, 20), i, np.uint8)).save(root / f"{split}_masks" / f"{split}{i}.png")
    base = [
        "train",
        "--data",
        str(root),
        "--arch",
        "webdino-tiny",
        "--weights",
        "random",
        "--imgsz",
        "28",
        "28",
        "--epochs",
        "1",
        "--workers",
        "0",
    ]
    _image(root / "train_images" / "train0.jpg")
    cli_error([*base, "--out", str(tmp_path / "r1")], capsys, "train0.jpg and train0.png both pair as 'train0'")
    (root / "train_images" / "train0.jpg").unlink()
    Image.fromarray(np.full((16, 20), 1, np.uint8)).save(root / "train_masks" / "train1_mask.png")
    cli_error([*base, "--out", str(tmp_path / "r2")], capsys, "train1.png and train1_mask.png both pair")
    (root / "train_masks" / "train1_mask.png").unlink()
    Image.fromarray(np.full((16, 20), 255, np.uint8)).save(root / "valid_masks" / "valid1.png")
    cli_error([*base, "--out", str(tmp_path / "r3")], capsys, "valid1.png: every pixel of this mask is ignored")
    assert not any((tmp_path / f"r{i}").exists() for i in (1, 2, 3))


def test_init_from_checks_backbone_classes_and_head(small: Path, tmp_path: Path, capsys) -> None:
    from conftest import tiny_train_cli

    assert main(tiny_train_cli(small, tmp_path / "a")) == 0
    model = str(tmp_path / "a" / "best_model_iou.pth")
    cli_error(
        tiny_train_cli(small, tmp_path / "b", "--init-from", model, "--head", "linear4"),
        capsys,
        "its head is simple, this run's --head is linear4",
    )
    cli_error(
        tiny_train_cli(small, tmp_path / "b", "--init-from", model, "--class-names", "bg", "people"),
        capsys,
        "its classes ['background', 'person'] are not this run's ['bg', 'people']",
    )
    cli_error(
        tiny_train_cli(small, tmp_path / "b", "--init-from", model, "--seed", "5"),
        capsys,
        "trained on another backbone",
    )  # a random backbone of another seed
    assert main(tiny_train_cli(small, tmp_path / "b", "--init-from", model, "--lr", "1e-9")) == 0
    a = torch.load(model, weights_only=True)["head"]
    b = torch.load(tmp_path / "b" / "best_model_iou.pth", weights_only=True)["head"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)  # started there (lr ~ 0)


def test_classes_nobody_named_leave_class_0_undrawn() -> None:
    """Without names (no classes.json, no --class-names) class 0 is background, as the overlays always drew it:
    show-data once painted the whole Penn-Fudan sample pink."""
    from webdino_seg.data.labels import Classes, default_class_names

    for count in (2, 5):
        assert Classes(tuple(default_class_names(count))).colors[0] == (0, 0, 0), count
    assert Classes(("Sky", "Road")).colors[0] != (0, 0, 0)  # a named class 0 is a class like any


def _pennfudan_polygons() -> list[tuple[int, int, list[np.ndarray]]]:
    """Real object outlines: every pedestrian of tests/fixtures/pennfudan-mini as the polygons an annotator's
    tool exports (cv2 contours, simplified to 1 px, shifted by a fraction so coordinates are not integers)."""
    import cv2

    found = []
    for path in sorted((FIXTURES / "pennfudan-mini" / "PedMasks").iterdir()):
        instances = np.asarray(Image.open(path))
        h, w = instances.shape
        for value in np.unique(instances)[1:]:
            contours, _ = cv2.findContours(
                (instances == value).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            polygons = [cv2.approxPolyDP(c, 1.0, True).reshape(-1, 2) + 0.37 for c in contours if len(c) >= 3]
            found.append((h, w, [p for p in polygons if len(p) >= 3]))
    return found


def test_coco_polygons_are_drawn_as_pycocotools_draws_them() -> None:
    """Every pixel of every real outline, and of random polygons (repeated points, corners outside the image),
    equals pycocotools' own mask (0 of 15.6 million pixels on the 66 real objects); the cv2 drawing used before
    made those objects 2.8% larger."""
    from webdino_seg.data.formats.shapes import fill_coco_polygons, fill_polygons

    coco_mask = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    cases = _pennfudan_polygons()
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(4, 40, 2))
        points = np.stack([rng.uniform(-3, w + 3, 7), rng.uniform(-3, h + 3, 7)], 1)
        points[3] = points[2]  # a repeated point (a zero-length edge)
        cases.append((h, w, [points, np.round(points[:4])]))
    differ = {"ours": 0, "cv2": 0, "object": 0}
    for h, w, polygons in cases:
        rles = coco_mask.frPyObjects([p.ravel().tolist() for p in polygons], h, w)
        reference = coco_mask.decode(coco_mask.merge(rles)).astype(bool)
        ours, before = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
        fill_coco_polygons(ours, polygons, 1)
        fill_polygons(before, polygons, 1)
        differ["ours"] += int((ours.astype(bool) != reference).sum())
        differ["cv2"] += int((before.astype(bool) != reference).sum())
        differ["object"] += int(reference.sum())
    assert len(cases) > 300 + 30 and differ["ours"] == 0, differ
    assert differ["cv2"] > 0.005 * differ["object"]  # the test can tell the two drawings apart


def _coco_file(path: Path, images: list[str], categories: list[str]) -> None:
    """A COCO JSON for `images` (20x16, each with one square of category 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "images": [{"id": i + 1, "file_name": n, "width": 20, "height": 16} for i, n in enumerate(images)],
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(categories)],
        "annotations": [
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]],
            }
            for i in range(len(images))
        ],
    }
    path.write_text(json.dumps(data))


def test_coco_exports_with_several_files_keep_their_splits(tmp_path: Path, capsys) -> None:
    """Roboflow's export (train/ valid/ test/, each with _annotations.coco.json beside its images) and COCO's own
    (annotations/instances_<split>2017.json, images in <split>2017/)."""
    robo = tmp_path / "roboflow"
    for split, names in (("train", ["t1.jpg", "t2.jpg"]), ("valid", ["v1.jpg"]), ("test", ["x1.jpg"])):
        for name in names:
            _image(robo / split / name)
        _coco_file(robo / split / "_annotations.coco.json", names, ["cat"])
    out = tmp_path / "out"
    assert main(["prepare-data", "--format", "coco", "--source", str(robo), "--out", str(out)]) == 0
    assert "wrote 2 train, 1 valid and 1 test pairs" in capsys.readouterr().out
    assert sorted(_masks(out, "train")) == ["t1.png", "t2.png"] and list(_masks(out, "test")) == ["x1.png"]
    coco = tmp_path / "coco"
    for split, names in (("train2017", ["a.jpg", "b.jpg"]), ("val2017", ["c.jpg"])):
        for name in names:
            _image(coco / split / name)
        _coco_file(coco / "annotations" / f"instances_{split}.json", names, ["cat"])
    assert main(["prepare-data", "--format", "coco", "--source", str(coco), "--out", str(tmp_path / "o2")]) == 0
    valid = _masks(tmp_path / "o2", "valid")
    assert list(valid) == ["c.png"] and (valid["c.png"] == 1).sum() == 64  # found in val2017/, drawn
    files = [str(coco / "annotations" / f"instances_{s}.json") for s in ("train2017", "val2017")]
    assert main(["prepare-data", "--format", "coco", "--source", *files, "--out", str(tmp_path / "o4")]) == 0
    assert list(_masks(tmp_path / "o4", "valid")) == ["c.png"]  # the files as given, each keeping its split
    cli_error(
        ["prepare-data", "--format", "voc", "--source", *files, "--out", str(tmp_path / "o5")],
        capsys,
        "--format voc takes one --source",
    )
    _coco_file(coco / "annotations" / "instances_val2017.json", ["c.jpg"], ["dog"])
    cli_error(
        ["prepare-data", "--format", "coco", "--source", str(coco), "--out", str(tmp_path / "o3")],
        capsys,
        "its categories ['dog'] are not those of",
    )


CAMVID = [
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


def test_a_dataset_keeps_its_own_colours(tmp_path: Path) -> None:
    """CamVid's 11 classes get SegNet's palette (Road purple, Sky grey), a label_colors.txt (CamVid's release
    format) gives its own, and a dataset with neither gets the fixed palette."""
    root = tmp_path / "camvid"
    for split in ("train", "val"):
        _image(root / split / f"{split}.png")
        (root / f"{split}annot").mkdir(parents=True)
        Image.fromarray(np.full((16, 20), 3, np.uint8)).save(root / f"{split}annot" / f"{split}.png")
    argv = ["prepare-data", "--format", "folders", "--source", str(root), "--ignore-index", "11", "--class-names"]
    assert main([*argv, *CAMVID, "--out", str(tmp_path / "a")]) == 0
    colors = dict(zip(CAMVID, read_classes_file(tmp_path / "a")["colors"], strict=True))
    assert colors["Road"] == [128, 64, 128] and colors["Sky"] == [128, 128, 128] and colors["Car"] == [64, 0, 128]
    (root / "label_colors.txt").write_text("".join(f"{i} {2 * i} {3 * i}\t{n}\n" for i, n in enumerate(CAMVID)))
    assert main([*argv, *CAMVID, "--out", str(tmp_path / "b")]) == 0
    assert read_classes_file(tmp_path / "b")["colors"][3] == [3, 6, 9]
    (root / "label_colors.txt").unlink()
    assert main([*argv, *[f"c{i}" for i in range(11)], "--out", str(tmp_path / "c")]) == 0
    assert read_classes_file(tmp_path / "c")["colors"][3] != [128, 64, 128]


# --- a dataset format is one module that registers its reader --------------------------------------------------


def test_a_toy_format_registered_from_here_alone_is_imported(tmp_path: Path, monkeypatch) -> None:
    """A reader registered from this file (no package file touched) is what prepare_dataset runs: its examples
    are written in the layout, its classes in classes.json, and a format that takes one source refuses two."""
    from webdino_seg.data.formats import readers
    from webdino_seg.data.formats.prepare import prepare_dataset
    from webdino_seg.data.formats.writer import Example
    from webdino_seg.data.labels import Classes

    readers.reader("voc")  # the package's own formats are loaded (and checked against FORMATS) first
    monkeypatch.setitem(readers.READERS, "toy", None)  # put back as it was after the test
    del readers.READERS["toy"]
    source = tmp_path / "toy"
    source.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(source / f"im{i}.png")

    @readers.register("toy")
    def read_toy(given: readers.Source) -> tuple[list[Example], Classes]:
        def mask(i: int = 0) -> np.ndarray:
            return np.full((8, 8), i % 2, np.uint8)

        examples = [
            Example(p, lambda i=i: mask(i), "valid" if i == 3 else "train")
            for i, p in enumerate(sorted(given.path.glob("*.png")))
        ]
        return examples, Classes(("sky", "sea"), ((0, 0, 255), (0, 128, 0)))

    prepare_dataset("toy", source, tmp_path / "out", log=lambda *_: None)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "train_images").iterdir()) == ["im0.png", "im1.png", "im2.png"]
    assert np.unique(read_mask(out / "valid_masks" / "im3.png", "ids")).tolist() == [1]
    assert read_classes_file(out)["names"] == ["sky", "sea"]
    with pytest.raises(Exception, match=r"--format toy takes one --source \(several, one per split, are for: coco\)"):
        prepare_dataset("toy", [source, source], tmp_path / "two", log=lambda *_: None)


def test_formats_named_for_the_cli_and_registered_readers_must_agree() -> None:
    from webdino_seg.data.formats.readers import READERS, check_names, reader
    from webdino_seg.data.names import FORMATS

    reader("voc")
    check_names(set(READERS) - {"toy"}, FORMATS)  # today's agree
    with pytest.raises(RuntimeError, match=r"\['yolo'\] named in data/names.py FORMATS without a reader"):
        check_names(set(READERS) - {"yolo", "toy"}, FORMATS)
    with pytest.raises(RuntimeError, match=r"\['toy'\] registered without a name there"):
        check_names(set(READERS) | {"toy"}, FORMATS)
