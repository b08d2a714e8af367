"""The data path at the hardware's pace, with the data unchanged: each training image decoded once for all its
views, uint8 until the device, the cache equal to the one made before, chunks kept only when worth it, and the
run's time accounted for stage by stage."""

from __future__ import annotations

import collections
import copy
import json
import re
import time
from pathlib import Path

import pytest
import torch

import webdino_seg.data.datasets as datasets_mod
import webdino_seg.engine.callbacks as callbacks_mod
import webdino_seg.engine.features as features_mod
import webdino_seg.utils.files as files_mod
from conftest import FIXTURES, SAMPLE, tiny_config
from webdino_seg import create_model, train
from webdino_seg.data.datasets import SegmentationDataset
from webdino_seg.engine.features import checksum, extract
from webdino_seg.models.layers import LayerScale, fold_layer_scales
from webdino_seg.models.variants import get_variant
from webdino_seg.utils.runtime import RunContext


def test_the_cache_equals_the_one_made_before_decode_once() -> None:
    """tests/fixtures/cache_before_decode_once.pt was made by the code that decoded each image once per view and
    normalised on the CPU; its recipe is stored beside the tensors."""
    before = torch.load(FIXTURES / "cache_before_decode_once.pt", weights_only=True)
    variant = get_variant("webdino-tiny")
    model = create_model("webdino-tiny", head="guided", seed=0).eval()
    ds = SegmentationDataset(SAMPLE, "train", (56, 84), variant.mean, variant.std, augment=True, seed=7)
    cache = extract(model, ds, views=3, context=RunContext(torch.device("cpu")), batch=4)
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
        expected = (
            (image * torch.tensor(variant.std).view(3, 1, 1) + torch.tensor(variant.mean).view(3, 1, 1)) * 255
        ).round()
        torch.testing.assert_close(images[view].float(), expected, atol=0, rtol=0)
        assert torch.equal(masks[view].long(), mask)
    assert not torch.equal(images[0], images[1]) or not torch.equal(images[1], images[2])  # the views differ


def test_chunks_are_kept_only_for_an_extraction_worth_protecting(
    small: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    variant = get_variant("webdino-tiny")
    model = create_model("webdino-tiny", seed=0).eval()
    ds = SegmentationDataset(small, "train", (56, 56), variant.mean, variant.std, augment=True, seed=1)
    quick = extract(model, ds, views=2, context=RunContext(torch.device("cpu")), batch=4, chunks=tmp_path / "quick")
    assert not (tmp_path / "quick").exists() or not list((tmp_path / "quick").iterdir())
    said = capsys.readouterr().out
    said_line = r"features: about \d+ s here, so not saved as it goes \(an interrupted run computes them again\)"
    assert re.search(said_line, said), said  # the seconds are this machine's: not asserted
    monkeypatch.setattr(features_mod, "PROTECT_S", 0.0)
    kept = extract(model, ds, views=2, context=RunContext(torch.device("cpu")), batch=4, chunks=tmp_path / "kept")
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
    real = callbacks_mod.write_checkpoint

    def slow(path, payload):
        time.sleep(0.3)  # the next epoch runs meanwhile (about 0.05 s here)
        return real(path, payload)

    monkeypatch.setattr(callbacks_mod, "write_checkpoint", slow)
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


def _scaled(arch: str) -> torch.nn.Module:
    """A tiny random model whose LayerScales hold uneven values, as trained ones do (random ones are all 1e-5)."""
    model = create_model(arch, seed=0).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.backbone.blocks:
            for scale in (block.ls1, block.ls2):
                scale.gamma.copy_(torch.rand(scale.gamma.shape, generator=generator) * 0.99 + 0.01)
    return model


@pytest.mark.parametrize(("arch", "size"), [("webdino-tiny", 56), ("dinov3-tiny", 64)])
def test_folded_layer_scales_match_the_unfolded_backbone(arch: str, size: int) -> None:
    """The stated bound: in float32 the folded backbone is within 1e-6 (relative, whole grid) of the unfolded
    one; in bf16 it is no further from the float32 model than the unfolded bf16 model is (measured here:
    0.00539 against 0.00542 for webdino-tiny, 0.00565 against 0.00567 for dinov3-tiny)."""
    reference = _scaled(arch)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    exact = reference.features(x)
    folded = copy.deepcopy(reference)
    assert fold_layer_scales(folded.backbone.blocks) == 2 * len(folded.backbone.blocks)
    assert not any(isinstance(m, LayerScale) for m in folded.modules())

    def distance(y: torch.Tensor) -> float:
        return float((y.float() - exact).norm() / exact.norm())

    assert distance(folded.features(x)) < 1e-6
    unfolded_bf16 = copy.deepcopy(reference)
    unfolded_bf16.backbone.to(torch.bfloat16)
    folded_bf16 = copy.deepcopy(reference).freeze_in(torch.bfloat16)  # what a GPU run uses
    assert distance(folded_bf16.features(x)) <= 1.02 * distance(unfolded_bf16.features(x))
    assert distance(folded_bf16.features(x)) < 0.01


def test_a_frozen_bf16_backbone_runs_without_autocast_and_the_head_with_it() -> None:
    model = create_model("webdino-tiny", head="multilayer", seed=0).eval().freeze_in(torch.bfloat16)
    seen: dict[str, object] = {}
    norm = model.backbone.blocks[0].norm1
    norm.register_forward_pre_hook(
        lambda m, args: seen.update(autocast=torch.is_autocast_enabled("cpu"), dtype=args[0].dtype)
    )
    head_layer = next(m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d))
    head_layer.register_forward_pre_hook(lambda m, args: seen.update(head=torch.is_autocast_enabled("cpu")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 3, 56, 56))
    assert seen == {"autocast": False, "dtype": torch.bfloat16, "head": True}


# --- video: the codec threads give way to the model's ----------------------------------------------------------


@pytest.mark.slow  # several seconds: the default run stays under three minutes
def test_a_video_process_runs_openmp_passive_and_keeps_a_users_choice(ckpt: Path, tmp_path: Path) -> None:
    """libgomp reports the wait policy it started with (OMP_DISPLAY_ENV): `webdino-seg video` sets PASSIVE before
    torch loads, and a value already in the environment is the one used."""
    import os
    import subprocess
    import sys

    from conftest import CLIP

    seen = []
    for given in (None, "ACTIVE"):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"OMP_DISPLAY_ENV": "TRUE"}
        if given:
            env["OMP_WAIT_POLICY"] = given
        out = tmp_path / f"{given}.mp4"
        cmd = [sys.executable, "-m", "webdino_seg", "video", "--input", str(CLIP), "--model", str(ckpt)]
        proc = subprocess.run(
            [*cmd, "--out", str(out), "--max-frames", "2"], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        seen.append([line.strip() for line in proc.stderr.splitlines() if "OMP_WAIT_POLICY" in line])
    assert seen == [["OMP_WAIT_POLICY = 'PASSIVE'"], ["OMP_WAIT_POLICY = 'ACTIVE'"]]


def test_a_codec_thread_lowers_its_own_priority_only() -> None:
    import os
    import threading

    from webdino_seg.utils.runtime import yield_to_model

    if not hasattr(os, "getpriority"):
        pytest.skip("no per-thread priorities on this system")
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []

    def codec() -> None:
        yield_to_model()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=codec)
    thread.start()
    thread.join()
    assert seen == [min(19, main_before + 10)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
