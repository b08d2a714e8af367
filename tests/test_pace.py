"""The data path at the hardware's pace, with the data unchanged: each training image decoded once for all its
views, uint8 until the device, the cache equal to the one made before, chunks kept only when worth it, and the
run's time accounted for stage by stage."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import torch

import webdino_seg.data.datasets as datasets_mod
import webdino_seg.engine.features as features_mod
import webdino_seg.engine.train as train_mod
import webdino_seg.utils.files as files_mod
from conftest import FIXTURES, SAMPLE, tiny_config
from webdino_seg import create_model, train
from webdino_seg.data.datasets import SegmentationDataset
from webdino_seg.engine.features import checksum, extract
from webdino_seg.models.variants import get_variant


def test_the_cache_equals_the_one_made_before_decode_once() -> None:
    """tests/fixtures/cache_before_decode_once.pt was made by the code that decoded each image once per view and
    normalised on the CPU; its recipe is stored beside the tensors."""
    before = torch.load(FIXTURES / "cache_before_decode_once.pt", weights_only=True)
    variant = get_variant("webdino-tiny")
    model = create_model("webdino-tiny", head="guided", seed=0).eval()
    ds = SegmentationDataset(SAMPLE, "train", (56, 84), variant.mean, variant.std, augment=True, seed=7)
    cache = extract(model, ds, views=3, device=torch.device("cpu"), batch=4)
    assert torch.equal(cache.masks, before["masks"]) and torch.equal(cache.images, before["images"])
    torch.testing.assert_close(cache.features, before["features"], atol=1e-6, rtol=0)  # equal here; 1e-6 for BLAS


def test_a_four_view_run_reads_each_training_image_at_most_twice(small: Path, tmp_path: Path, monkeypatch) -> None:
    reads: collections.Counter = collections.Counter()
    real = datasets_mod.read_image

    def counting(path, *args, **kwargs):
        reads[Path(path).name] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets_mod, "read_image", counting)
    train(tiny_config(small, tmp_path / "r", epochs=4, cache_views=4, imgsz=(56, 56)), log=lambda *_: None)
    names = {p.name for p in (small / "train_images").iterdir()}
    assert names <= set(reads), "every training image is read"
    assert max(reads[name] for name in names) == 2, {name: reads[name] for name in names}  # check, then all views


def test_every_view_from_one_decode_equals_the_item_drawn_alone(small: Path) -> None:
    variant = get_variant("webdino-tiny")
    ds = SegmentationDataset(small, "train", (56, 70), variant.mean, variant.std, augment=True, seed=5)
    images, masks = ds.views(3, 4)
    assert images.dtype == masks.dtype == torch.uint8 and images.shape == (4, 3, 56, 70)
    for view in range(4):
        image, mask = ds[(view, 3)]
        expected = ((image * torch.tensor(variant.std).view(3, 1, 1) + torch.tensor(variant.mean).view(3, 1, 1))
                    * 255).round()  # fmt: skip
        torch.testing.assert_close(images[view].float(), expected, atol=0, rtol=0)
        assert torch.equal(masks[view].long(), mask)
    assert not torch.equal(images[0], images[1]) or not torch.equal(images[1], images[2])  # the views differ


def test_chunks_are_kept_only_for_an_extraction_worth_protecting(
    small: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    variant = get_variant("webdino-tiny")
    model = create_model("webdino-tiny", seed=0).eval()
    ds = SegmentationDataset(small, "train", (56, 56), variant.mean, variant.std, augment=True, seed=1)
    quick = extract(model, ds, views=2, device=torch.device("cpu"), batch=4, chunks=tmp_path / "quick")
    assert not (tmp_path / "quick").exists() or not list((tmp_path / "quick").iterdir())
    said = capsys.readouterr().out
    assert "features: about 1 s here, so not saved as it goes (an interrupted run computes them again)" in said
    monkeypatch.setattr(features_mod, "PROTECT_S", 0.0)
    kept = extract(model, ds, views=2, device=torch.device("cpu"), batch=4, chunks=tmp_path / "kept")
    files = sorted((tmp_path / "kept").glob("b*.pt"))
    assert len(files) == 6  # 12 images, 2 a batch (4 inputs: 2 views each)
    assert torch.equal(quick.features, kept.features)
    for path in files:  # each chunk holds both views of its images, and its checksum is the one of its tensors
        part = torch.load(path, weights_only=True)
        assert part["sha256"] == checksum(part)
        rows = torch.tensor(part["rows"])
        assert torch.equal(kept.features[rows], part["features"]) and len(rows) == 4


def test_checkpoints_written_in_the_background_hold_their_epoch(small: Path, tmp_path: Path, monkeypatch) -> None:
    """A writer slower than an epoch saves what the epoch ended with, not what training has made of it since:
    every file equals the one written in the foreground."""
    settings = {"epochs": 3, "cache_views": 3, "imgsz": (56, 56), "lr": 1e-2}
    with monkeypatch.context() as m:  # the foreground: each write done before training goes on
        m.setattr(files_mod.BackgroundWriter, "submit", lambda self, write: write())
        fore = train(tiny_config(small, tmp_path / "fore", **settings), log=lambda *_: None)
    real = train_mod.write_checkpoint

    def slow(path, payload):
        time.sleep(0.3)  # the next epoch runs meanwhile (about 0.05 s here)
        return real(path, payload)

    monkeypatch.setattr(train_mod, "write_checkpoint", slow)
    back = train(tiny_config(small, tmp_path / "back", **settings), log=lambda *_: None)
    for name in ("last.pth", "last.prev.pth", "best_model_iou.pth", "best_model_loss.pth"):
        a, b = (torch.load(run / name, weights_only=True) for run in (fore, back))
        assert a["epoch"] == b["epoch"], name
        assert all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"]), name
    parts = json.loads((back / "timings.json").read_text())["stages"]["epochs"]["parts"]
    assert parts["checkpoints (writer thread)"] > 0.3 * 2  # epoch 1 writes both best models: timed where they ran


def test_timings_add_up_to_the_run_and_name_what_bound_it(small: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    start = time.perf_counter()
    run = train(tiny_config(small, tmp_path / "r", epochs=2, imgsz=(56, 56)), log=logs.append)
    wall = time.perf_counter() - start
    timings = json.loads((run / "timings.json").read_text())
    stages = timings["stages"]
    assert list(stages) == ["startup", "cache", "epochs", "finish"]
    assert abs(sum(s["seconds"] for s in stages.values()) - wall) <= 0.15 * wall
    assert {"backbone", "decoding and augmenting images"} <= set(stages["cache"]["parts"])
    assert {"training steps", "validation", "checkpoints (writer thread)"} <= set(stages["epochs"]["parts"])
    bound = timings["bound_by"]
    assert bound["stage"] == max(stages, key=lambda k: stages[k]["seconds"])
    assert any(line.startswith("time: startup ") and " s wall" in line for line in logs), logs
    assert any(line.startswith(f"bound by: {bound['stage']}") for line in logs), logs
