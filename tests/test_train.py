"""Training on real Penn-Fudan images: the metric must rise, artifacts must load, resume must be exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import assert_same_metrics, make_subset, metrics_rows, tiny_config
from webdino_seg.app.cli import main
from webdino_seg.data.datasets import SegmentationDataset
from webdino_seg.engine.runfolder import RunFolder
from webdino_seg.engine.train import TrainConfig, train
from webdino_seg.models.checkpoint import load_model
from webdino_seg.models.variants import IMAGENET_MEAN, IMAGENET_STD
from webdino_seg.utils.metrics import ConfusionMatrix

ARTIFACTS = [
    "best_model_loss.pth",
    "best_model_iou.pth",
    "final_model.pth",
    "last.pth",
    "metrics.csv",
    "config.yaml",
    "loss.png",
    "accuracy.png",
    "miou.png",
]


def _background_miou(data: Path, imgsz: tuple[int, int]) -> float:
    ds = SegmentationDataset(data, "valid", imgsz, IMAGENET_MEAN, IMAGENET_STD)
    cm = ConfusionMatrix(2)
    for i in range(len(ds)):
        mask = ds[i][1]
        cm.update(torch.zeros_like(mask), mask)
    return cm.miou()


def test_training_beats_all_background(trained_run: Path, prepared: Path) -> None:
    rows = metrics_rows(trained_run)
    assert len(rows) == 6
    baseline = _background_miou(prepared, (224, 224))
    best = max(float(r["valid_miou"]) for r in rows)
    print(
        f"all-background valid mIoU {baseline:.4f}; trained best {best:.4f}; epoch 1 {float(rows[0]['valid_miou']):.4f}"
    )
    assert best >= baseline + 0.05
    assert float(rows[-1]["valid_miou"]) > float(rows[0]["valid_miou"])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_every_artifact_exists_and_loads(trained_run: Path, prepared: Path) -> None:
    for name in ARTIFACTS:
        assert (trained_run / name).stat().st_size > 0, name
    for name in ("loss.png", "accuracy.png", "miou.png"):
        with Image.open(trained_run / name) as img:
            assert img.format == "PNG" and img.width >= 400
    preds = sorted((trained_run / "valid_preds").iterdir())
    assert [p.stem for p in preds] == sorted(p.stem for p in (prepared / "valid_images").iterdir())
    cfg = TrainConfig.from_yaml(trained_run / "config.yaml")
    assert cfg.arch == "webdino-tiny" and cfg.imgsz == (224, 224)
    rows = metrics_rows(trained_run)
    best_epoch = max(range(len(rows)), key=lambda i: float(rows[i]["valid_miou"])) + 1
    for name in ("best_model_loss.pth", "best_model_iou.pth", "final_model.pth"):
        model, ckpt = load_model(trained_run / name)
        assert ckpt["backbone"] is None  # a frozen backbone is not copied into every checkpoint
        assert ckpt["backbone_identity"]["arch"] == "webdino-tiny"
        assert ckpt["class_names"] == ["background", "person"] and ckpt["imgsz"] == [224, 224]
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 2, 16, 16)
    assert torch.load(trained_run / "best_model_iou.pth", weights_only=True)["epoch"] == best_epoch
    last = torch.load(trained_run / "last.pth", weights_only=True)
    assert last["epoch"] == 6 and len(last["history"]) == 6


def test_evaluate_command(trained_run: Path, prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert (
        main(
            ["evaluate", "--data", str(prepared), "--model", str(trained_run / "best_model_iou.pth"), "--out", str(out)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    valid = len(list((prepared / "valid_images").iterdir()))
    assert report["images"] == valid == 6 and len(report["per_image"]) == valid
    assert set(report["iou"]) == {"background", "person"}
    assert 0.0 < report["miou"] < 1.0
    assert report["per_image_miou"]["min"] <= report["per_image_miou"]["median"] <= report["per_image_miou"]["max"]
    assert abs(report["miou"] - sum(report["iou"].values()) / 2) < 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, False])
def test_resume_after_crash_matches_uninterrupted(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: bool
) -> None:
    data = make_subset(prepared, tmp_path / "data", 12, 4)
    whole = train(tiny_config(data, tmp_path / "whole", cache=cache), log=lambda *_: None)

    real_write = RunFolder.write_metrics

    def crash_after_epoch_2(run: RunFolder, history: list[dict]) -> None:
        real_write(run, history)
        if len(history) == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(RunFolder, "write_metrics", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data, tmp_path / "crashed", cache=cache), log=lambda *_: None)
    monkeypatch.setattr(RunFolder, "write_metrics", real_write)
    assert len(metrics_rows(tmp_path / "crashed")) == 2 and not (tmp_path / "crashed" / "final_model.pth").exists()
    assert main(["train", "--resume", str(tmp_path / "crashed")]) == 0
    assert_same_metrics(metrics_rows(tmp_path / "crashed"), metrics_rows(whole))
    a = torch.load(whole / "final_model.pth", weights_only=True)["head"]
    b = torch.load(tmp_path / "crashed" / "final_model.pth", weights_only=True)["head"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_cache_trains_like_the_live_pipeline(prepared: Path, tmp_path: Path) -> None:
    data = make_subset(prepared, tmp_path / "data", 8, 4)
    cached = _run(data, tmp_path / "c", epochs=2, cache_views=2)
    live = _run(data, tmp_path / "l", epochs=2, cache=False)
    for rc, rl in zip(cached, live, strict=True):
        for key in ("train_loss", "valid_loss", "valid_miou", "valid_pixel_acc"):
            assert abs(float(rc[key]) - float(rl[key])) < 1e-4, key


def test_run_folders_are_never_reused(prepared: Path, tmp_path: Path) -> None:
    data = make_subset(prepared, tmp_path / "data", 4, 2)
    first = train(tiny_config(data, tmp_path / "run", epochs=1), log=lambda *_: None)
    second = train(tiny_config(data, tmp_path / "run", epochs=1), log=lambda *_: None)
    assert first == tmp_path / "run" and second == tmp_path / "run-2"


def test_train_without_data_says_what_it_needs(capsys) -> None:
    assert main(["train", "--arch", "webdino-tiny", "--weights", "random"]) == 2
    err = capsys.readouterr().err
    assert "--data is required" in err and "train_images/ train_masks/ valid_images/ valid_masks/" in err


def _run(data: Path, out: Path, log=lambda *_: None, **kw) -> list[dict]:
    """Train the tiny model and return its metrics without timings."""
    return metrics_rows(train(tiny_config(data, out, **kw), log=log), timings=False)


def test_feature_cache_on_disk_is_reused_and_keyed(prepared: Path, tmp_path: Path) -> None:
    data = make_subset(prepared, tmp_path / "data", 6, 2)
    cache = str(tmp_path / "cache")
    first = _run(data, tmp_path / "a", epochs=2, feature_cache_dir=cache)
    files = sorted(Path(cache).glob("*.pt"))
    assert len(files) == 2  # train views and valid
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert_same_metrics(_run(data, tmp_path / "b", epochs=2, feature_cache_dir=cache), first)
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # read, not rewritten
    # a changed image, another size or another view count each make a new entry: a stale cache is never used
    image = next((data / "train_images").iterdir())
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)
    _run(data, tmp_path / "c", epochs=1, feature_cache_dir=cache)
    assert len(list(Path(cache).glob("*.pt"))) == 3
    _run(data, tmp_path / "d", epochs=1, imgsz=(84, 84), feature_cache_dir=cache)
    assert len(list(Path(cache).glob("*.pt"))) == 5


def test_fine_tune_saves_and_reloads_the_backbone(prepared: Path, tmp_path: Path) -> None:
    data = make_subset(prepared, tmp_path / "data", 4, 2)
    run = train(tiny_config(data, tmp_path / "ft", epochs=1, fine_tune=True), log=lambda *_: None)
    ckpt = torch.load(run / "final_model.pth", weights_only=True)
    assert ckpt["fine_tune"] and ckpt["backbone"] is not None
    model, _ = load_model(run / "final_model.pth")
    assert model.fine_tune
    for key, value in ckpt["backbone"].items():
        assert torch.equal(model.backbone.state_dict()[key], value)
    from webdino_seg.models.builder import build_backbone
    from webdino_seg.models.variants import get_variant

    untouched = build_backbone(get_variant("webdino-tiny"), None, 3)  # the same seeded random start
    assert not torch.equal(untouched.blocks[0].attn.qkv.weight, model.backbone.blocks[0].attn.qkv.weight)


def test_cache_too_big_for_memory_spills_to_disk(prepared: Path, tmp_path: Path) -> None:
    data = make_subset(prepared, tmp_path / "data", 6, 2)
    spill = tmp_path / "spill"
    in_memory = _run(data, tmp_path / "m", epochs=2)
    logs: list[str] = []
    on_disk = _run(data, tmp_path / "d", logs.append, epochs=2, cache_memory_gb=1e-6, feature_cache_dir=str(spill))
    assert any("in disk" in line for line in logs), logs
    assert not list(spill.glob("features-*"))  # the mapped files were unlinked at once
    for a, b in zip(in_memory, on_disk, strict=True):  # bf16 on disk: close, not equal
        assert abs(float(a["valid_miou"]) - float(b["valid_miou"])) < 0.02
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 0.01
    # served memory-mapped from the saved cache
    assert_same_metrics(
        _run(data, tmp_path / "e", epochs=2, cache_memory_gb=1e-6, feature_cache_dir=str(spill)), on_disk
    )


def test_written_files_get_normal_permissions(trained_run: Path, prepared: Path) -> None:
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    for path in (trained_run / "best_model_iou.pth", trained_run / "metrics.csv", trained_run / "loss.png"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path  # not mkstemp's owner-only 0600
    assert stat.S_IMODE(prepared.stat().st_mode) == 0o777 & ~mask


@pytest.mark.slow
@pytest.mark.fulldata
def test_training_on_the_full_set_beats_all_background(prepared_full: Path, tmp_path: Path) -> None:
    run = train(
        tiny_config(prepared_full, tmp_path / "run", imgsz=(224, 224), epochs=6, batch=8, cache_views=2, seed=0),
        log=lambda *_: None,
    )
    rows = metrics_rows(run)
    baseline = _background_miou(prepared_full, (224, 224))
    best = max(float(r["valid_miou"]) for r in rows)
    print(f"full set: all-background valid mIoU {baseline:.4f}; trained best {best:.4f}")
    assert best >= baseline + 0.05
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_an_epoch_line_stays_short_with_many_classes_and_names_absent_ones() -> None:
    from webdino_seg.engine.callbacks import epoch_line as _epoch_line

    names = [f"class{i}" for i in range(81)]  # COCO's 80 and background
    row = {
        "epoch": 3,
        "lr": 1e-3,
        "train_loss": 0.5,
        "train_pixel_acc": 0.8,
        "train_miou": 0.3,
        "valid_loss": 0.6,
        "valid_pixel_acc": 0.7,
        "valid_miou": 0.25,
        "seconds": 2.0,
        **{f"valid_iou_{n}": (float("nan") if i % 2 else i / 100) for i, n in enumerate(names)},
    }
    line = _epoch_line(row, 10, names)
    assert len(line) < 240 and "worst IoU class0 0.0000 class2 0.0200 class4 0.0400" in line, line
    assert "40 class(es) absent from valid" in line and "nan" not in line
    two = _epoch_line(row | {"valid_iou_a": 0.5, "valid_iou_b": float("nan")}, 10, ["a", "b"])
    assert "(IoU a 0.5000 b absent from valid)" in two
