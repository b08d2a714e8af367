"""Data that grows without leaking the split: no image ever changes sides, the same image is never in two splits,
a model is never scored on what it trained on, a run keeps its data, and a published test split is usable."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli_error, tiny_train_cli
from webdino_seg.app.cli import main
from webdino_seg.data.splitrule import stable_split


def _flat(src: Path, out: Path, names: list[str]) -> Path:
    """A flat images/ + masks/ folder holding `names` of the prepared split folders at `src`."""
    for kind in ("images", "masks"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    for name in names:
        split = "train" if (src / "train_images" / name).exists() else "valid"
        shutil.copy(src / f"{split}_images" / name, out / "images" / name)
        shutil.copy(src / f"{split}_masks" / name, out / "masks" / name)
    return out


def test_adding_images_moves_none_and_the_old_seeded_shuffle_did() -> None:
    """The issue's figure: 300 + 5 images. The stable rule moves no image; the shuffle moved most."""
    names = [f"img{i:04d}.jpg" for i in range(300)]
    grown = names + [f"new{i}.jpg" for i in range(5)]
    before, after = stable_split(names, 0.15, 42), stable_split(grown, 0.15, 42)
    assert all(after[n] == side for n, side in before.items())
    assert 0.10 < sum(s == "valid" for s in before.values()) / 300 < 0.20

    def shuffled(items: list[str]) -> set[str]:  # the tutorial's rule, which this replaces
        order = items[:]
        random.Random(42).shuffle(order)
        return set(order[: round(len(items) * 0.15)])

    assert len(shuffled(grown) - shuffled(names) - set(grown[300:])) > 20  # trained-on images now in valid
    tiny = stable_split(["a.jpg", "b.jpg"], 0.15, 0)
    assert sorted(tiny.values()) == ["train", "valid"]  # at least one on each side


def test_a_grown_flat_folder_and_init_from_leak_nothing(prepared: Path, tmp_path: Path, capsys) -> None:
    images = sorted(p.name for s in ("train", "valid") for p in (prepared / f"{s}_images").iterdir())
    flat = _flat(prepared, tmp_path / "flat", images[:19])
    first = tmp_path / "first"
    assert main([*tiny_train_cli(flat, first), "--valid-fraction", "0.25"]) == 0
    trained = json.loads((first / "split.json").read_text())["train"]
    _flat(prepared, flat, images[19:])  # 5 images arrive
    second = tmp_path / "second"
    assert (
        main(
            [
                *tiny_train_cli(flat, second),
                "--valid-fraction",
                "0.25",
                "--init-from",
                str(first / "best_model_iou.pth"),
            ]
        )
        == 0
    )
    split = json.loads((second / "split.json").read_text())
    assert not set(trained) & set(split["valid"]) and set(trained) <= set(split["train"])
    assert len(split["train"]) + len(split["valid"]) == 24


@pytest.mark.fulldata
def test_sixty_real_images_then_five_more_leak_nothing(prepared_full: Path, tmp_path: Path) -> None:
    """The issue's case with real Penn-Fudan photos: a flat folder of 60, a run, 5 added, a run with --init-from."""
    images = sorted(p.name for s in ("train", "valid") for p in (prepared_full / f"{s}_images").iterdir())[:65]
    flat = _flat(prepared_full, tmp_path / "flat", images[:60])
    first = tmp_path / "first"
    assert main([*tiny_train_cli(flat, first), "--valid-fraction", "0.15"]) == 0
    before = json.loads((first / "split.json").read_text())
    _flat(prepared_full, flat, images[60:])
    second = tmp_path / "second"
    assert (
        main(
            [
                *tiny_train_cli(flat, second),
                "--valid-fraction",
                "0.15",
                "--init-from",
                str(first / "best_model_iou.pth"),
            ]
        )
        == 0
    )
    after = json.loads((second / "split.json").read_text())
    assert not set(before["train"]) & set(after["valid"]), "a trained-on image in the new valid split"
    assert set(before["valid"]) <= set(after["valid"]) and len(after["train"]) + len(after["valid"]) == 65


def test_init_from_refuses_a_valid_split_it_trained_on(small: Path, tmp_path: Path, capsys) -> None:
    first = tmp_path / "first"
    assert main(tiny_train_cli(small, first)) == 0
    data = tmp_path / "data"
    shutil.copytree(small, data)
    moved = sorted((data / "train_images").iterdir())[0].name
    for kind in ("images", "masks"):  # a trained-on image moved to valid, under another name
        (data / f"train_{kind}" / moved).rename(data / f"valid_{kind}" / f"renamed_{moved}")
    cli_error(
        [*tiny_train_cli(data, tmp_path / "second"), "--init-from", str(first / "best_model_iou.pth")],
        capsys,
        "1 of this run's 5 valid images were in the training set of that model",
        f"renamed_{moved}",
    )
    assert not (tmp_path / "second").exists() or not (tmp_path / "second" / "last.pth").exists()


def test_the_same_image_in_two_splits_is_refused_everywhere(small: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(small, data)
    twin = sorted((data / "train_images").iterdir())[0]
    shutil.copy(twin, data / "valid_images" / "twin.png")
    shutil.copy(data / "train_masks" / twin.name, data / "valid_masks" / "twin.png")
    cli_error(
        tiny_train_cli(data, tmp_path / "r"), capsys, f"{twin} (train) and", "twin.png (valid) are the same image"
    )
    assert not (tmp_path / "r").exists()
    clean = tmp_path / "clean"
    assert main(tiny_train_cli(small, clean)) == 0
    cli_error(
        [
            "evaluate",
            "--data",
            str(data),
            "--model",
            str(clean / "best_model_iou.pth"),
            "--out",
            str(tmp_path / "e.json"),
        ],
        capsys,
        "are the same image",
    )
    source = tmp_path / "src"
    for split, folder in (("train", "train"), ("val", "val")):
        (source / folder).mkdir(parents=True)
        (source / f"{folder}annot").mkdir()
        image = twin if split == "train" else data / "valid_images" / "twin.png"
        shutil.copy(image, source / folder / f"{split}.png")
        shutil.copy(data / "train_masks" / twin.name, source / f"{folder}annot" / f"{split}.png")
    cli_error(
        ["prepare-data", "--format", "folders", "--source", str(source), "--out", str(tmp_path / "o")],
        capsys,
        "train.png (train) and",
        "val.png (valid) are the same image",
    )
    assert not (tmp_path / "o").exists()


def test_resume_refuses_data_that_changed_under_a_split_folder_run(small: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(small, data)
    run = tmp_path / "r"
    assert main(tiny_train_cli(data, run)) == 0
    record = json.loads((run / "data.json").read_text())
    assert set(record) == {"train", "valid"} and len(record["train"]) == 12
    extra = sorted((small / "valid_images").iterdir())[0]  # a new photo: a valid one, mirrored
    Image.open(extra).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(data / "train_images" / "new.png")
    Image.open(small / "valid_masks" / extra.name).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        data / "train_masks" / "new.png"
    )
    cli_error(["train", "--resume", str(run), "--epochs", "2"], capsys, "1 train image(s) added (e.g. new.png)")
    (data / "train_images" / "new.png").unlink()
    (data / "train_masks" / "new.png").unlink()
    mask = data / "valid_masks" / extra.name
    values = np.asarray(Image.open(mask)).copy()
    values[0, 0] = 1 - values[0, 0]
    Image.fromarray(values).save(mask)
    cli_error(["train", "--resume", str(run), "--epochs", "2"], capsys, f"1 valid image(s) changed (e.g. {extra.name})")


def _segnet(root: Path, splits: dict[str, int]) -> None:
    """A CamVid-like release in SegNet's layout (``train/`` + ``trainannot/`` ...), 11 = ignore, 4 classes."""
    rng = np.random.default_rng(0)
    for split, n in splits.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (28, 42, 3), dtype=np.uint8)).save(root / split / f"{split}{i}.png")
            label = np.full((28, 42), 3, np.uint8)
            label[:6] = 11
            label[14:, : 10 + i] = i % 3
            Image.fromarray(label).save(root / f"{split}annot" / f"{split}{i}.png")


def test_a_published_test_split_is_imported_and_scored_alone(tmp_path: Path, capsys) -> None:
    source = tmp_path / "camvid"
    _segnet(source, {"train": 6, "val": 2, "test": 3})
    out = tmp_path / "prepared"
    assert (
        main(
            ["prepare-data", "--format", "folders", "--source", str(source), "--out", str(out), "--ignore-index", "11"]
        )
        == 0
    )
    assert "wrote 6 train, 2 valid and 3 test pairs" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "test_images").iterdir()) == ["test0.png", "test1.png", "test2.png"]
    run = tmp_path / "run"
    assert main(tiny_train_cli(out, run, imgsz=(28, 42), num_classes=4)) == 0
    report = tmp_path / "test.json"
    model = str(run / "best_model_iou.pth")
    assert main(["evaluate", "--data", str(out), "--model", model, "--split", "test", "--out", str(report)]) == 0
    scored = json.loads(report.read_text())
    assert scored["split"] == "test" and sorted(scored["per_image"]) == ["test0.png", "test1.png", "test2.png"]
    labelled = sum(int((np.asarray(Image.open(source / "testannot" / f"test{i}.png")) != 11).sum()) for i in range(3))
    assert scored["labelled_pixels"] == labelled  # 11 ignored: only the other pixels are scored
    every = tmp_path / "all.json"
    assert main(["evaluate", "--data", str(out), "--model", model, "--split", "all", "--out", str(every)]) == 0
    assert json.loads(every.read_text())["images"] == 11
    shutil.rmtree(out / "test_images")
    shutil.rmtree(out / "test_masks")
    cli_error(
        ["evaluate", "--data", str(out), "--model", model, "--split", "test"],
        capsys,
        "has no test_images/ + test_masks/; its splits are train, valid",
    )


def test_prepare_data_on_a_grown_export_keeps_every_earlier_image_in_its_split(tmp_path: Path, capsys) -> None:
    source = tmp_path / "export"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    rng = np.random.default_rng(1)

    def add(i: int) -> None:
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(source / "images" / f"p{i:03d}.png")
        Image.fromarray((rng.random((20, 24)) > 0.5).astype(np.uint8)).save(source / "masks" / f"p{i:03d}.png")

    for i in range(40):
        add(i)
    out = tmp_path / "prepared"
    argv = [
        "prepare-data",
        "--format",
        "folders",
        "--source",
        str(source),
        "--out",
        str(out),
        "--class-names",
        "background",
        "thing",
    ]
    assert main(argv) == 0
    before = json.loads((out / "split.json").read_text())
    for i in range(40, 52):
        add(i)
    assert main(argv) == 0
    assert "40 image(s) keep their split, 12 new" in capsys.readouterr().out
    after = json.loads((out / "split.json").read_text())
    assert set(before["train"]) <= set(after["train"]) and set(before["valid"]) <= set(after["valid"])
    assert len(after["train"]) + len(after["valid"]) == 52 and not list(tmp_path.glob(".prepared*"))
