"""Tests that check meaning, not structure: a resumed run equals an uninterrupted one with every stateful option
on, evaluate's figures equal an independent computation, colours are pinned, cache keys follow every input,
multi-layer heads read the official normed layers, and a checkpoint is never written at its final path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import FIXTURES, TINY, assert_same_metrics, metrics_rows, reference_mask, tiny_config
from webdino_seg import create_backbone, load_model, train
from webdino_seg.app.cli import main

# --- resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "fine_tune"), [("simple", False), ("linear4", False), ("guided", False),
                                                 ("simple", True)])  # fmt: skip
def test_resume_equals_uninterrupted_with_every_stateful_option(small: Path, tmp_path: Path, head: str,
                                                                fine_tune: bool) -> None:  # fmt: skip
    """The lr drops at epoch 3, after the resume point: a scheduler that is not restored trains at the wrong rate;
    BatchNorm statistics (linear4), the guided head's image branch and a fine-tuned backbone must all come back."""
    common = {"imgsz": (56, 56), "head": head, "fine_tune": fine_tune, "scheduler": True, "scheduler_epochs": [3],
              "cache_views": 2, "lr": 3e-3}  # fmt: skip
    whole = train(tiny_config(small, tmp_path / "whole", epochs=4, **common), log=lambda *_: None)
    part = train(tiny_config(small, tmp_path / "part", epochs=1, **common), log=lambda *_: None)
    assert main(["train", "--resume", str(part), "--epochs", "4"]) == 0
    rows = metrics_rows(part)
    assert [float(r["lr"]) for r in rows] == pytest.approx([3e-3, 3e-3, 3e-3, 3e-4])
    assert_same_metrics(rows, metrics_rows(whole))


# --- evaluate against an independent computation ------------------------------------------------


def test_evaluate_figures_equal_an_independent_computation(trained_run: Path, prepared: Path, tmp_path: Path) -> None:
    """Scores at each image's own resolution: OpenCV/NumPy predictions, a NumPy confusion matrix per image and
    pooled, against evaluate's JSON."""
    ckpt = trained_run / "best_model_iou.pth"
    out = tmp_path / "e.json"
    assert main(["evaluate", "--data", str(prepared), "--model", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    model, meta = load_model(ckpt)
    total = np.zeros((2, 2), np.int64)
    per_image = {}
    for path in sorted((prepared / "valid_images").iterdir()):
        image = np.asarray(Image.open(path).convert("RGB"))
        truth = np.asarray(Image.open(prepared / "valid_masks" / f"{path.stem}.png"))
        pred = reference_mask(model, meta, image)
        assert pred.shape == truth.shape == image.shape[:2]  # scored at the image's own size
        cm = np.bincount(truth.ravel().astype(np.int64) * 2 + pred.ravel(), minlength=4).reshape(2, 2)
        total += cm
        iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
        per_image[path.name] = float(np.nanmean(iou))
    iou = np.diag(total) / (total.sum(0) + total.sum(1) - np.diag(total))
    assert report["miou"] == pytest.approx(iou.mean(), abs=2e-3)  # the reference resizes with OpenCV: a few pixels
    assert report["pixel_accuracy"] == pytest.approx(np.diag(total).sum() / total.sum(), abs=1e-3)
    assert report["per_image"].keys() == per_image.keys()
    for name, value in per_image.items():
        assert report["per_image"][name] == pytest.approx(value, abs=5e-3), name
    worst = sorted(per_image, key=per_image.get)[:5]
    assert report["per_image_miou"]["worst"][:2] == worst[:2]  # worst first, not best


# --- colours ------------------------------------------------------------------------------------


def test_overlay_colours_are_pinned() -> None:
    from webdino_seg.utils.overlay import overlay

    image = np.zeros((2, 3, 3), np.uint8)
    mask = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
    out = overlay(image, mask)
    assert out[0, 0].tolist() == [0, 0, 0]  # background untouched
    assert out[0, 1].tolist() == [128, 0, 80]  # person: half of (255, 0, 160), in RGB order
    assert out[0, 2].tolist() == [0, 100, 128]  # class 2: half of (0, 200, 255)
    assert out[1, 0].tolist() == [64, 64, 64]  # void: half grey


def test_video_frames_carry_the_class_colour_in_rgb(ckpt: Path, tmp_path: Path) -> None:
    """A model that says 'person' everywhere: every output pixel leans to magenta (red and blue well over green),
    with red over blue, as (255, 0, 160) blended over grey."""
    import av

    from webdino_seg import Predictor, run_video

    model, meta = load_model(ckpt)
    with torch.no_grad():
        last = model.head.decode[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-10.0, 10.0]))
    predictor = Predictor(model, tuple(meta["imgsz"]), meta["mean"], meta["std"], meta["class_names"])
    src = tmp_path / "grey.mp4"
    with av.open(str(src), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for _ in range(5):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((64, 96, 3), 100, np.uint8), "rgb24")))
        container.mux(stream.encode())
    run_video(predictor, src, tmp_path / "out.mp4", progress=False)
    with av.open(str(tmp_path / "out.mp4")) as container:
        frame = next(iter(container.decode(video=0))).to_ndarray(format="rgb24")[40:, 40:].reshape(-1, 3).mean(0)
    r, g, b = frame
    assert r > b + 20 and b > g + 40, frame  # expected about (178, 50, 130)


# --- cache keys ---------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(change=st.sampled_from(["imgsz", "augment", "seed", "views", "mask_mode", "ignore_index", "reduce_labels",
                               "mean", "weights", "fingerprint", "layers", "images", "image_bytes", "mask_bytes"]),
       value=st.integers(1, 7))  # fmt: skip
def test_every_input_of_the_features_changes_the_cache_key(change: str, value: int, tmp_path_factory) -> None:
    from types import SimpleNamespace

    from webdino_seg.data.datasets import SegmentationDataset
    from webdino_seg.data.labels import Coding
    from webdino_seg.engine.features import cache_key

    root = tmp_path_factory.mktemp("k")
    for kind in ("train_images", "train_masks"):
        (root / kind).mkdir()
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(root / "train_images" / "a.png")
    Image.fromarray(np.ones((8, 8), np.uint8)).save(root / "train_masks" / "a.png")

    def key(**over) -> str:
        coding = Coding(over.get("ignore_index", 255), over.get("reduce_labels", False))
        ds = SegmentationDataset(root, "train", over.get("imgsz", (28, 28)), over.get("mean", (0.5, 0.5, 0.5)),
                                 (0.2, 0.2, 0.2), mask_mode=over.get("mask_mode", "ids"),
                                 augment=over.get("augment", True), seed=over.get("seed", 0),
                                 coding=coding)  # fmt: skip
        head = SimpleNamespace(layers=over.get("layers", 1))
        model = SimpleNamespace(head=head, needs_image=over.get("images", False))
        identity = {"arch": "webdino-tiny", "weights": over.get("weights", "random"), "seed": 0,
                    "fingerprint": over.get("fingerprint", 1.5)}  # fmt: skip
        return cache_key(ds, model, over.get("views", 2), identity)

    base = key()
    assert key() == base  # the same inputs, the same key
    if change in ("image_bytes", "mask_bytes"):
        folder = "train_images" if change == "image_bytes" else "train_masks"
        fill = np.full((8, 8, 3), 9 + value, np.uint8) if change == "image_bytes" else np.full((8, 8), 2 * (value % 2))
        Image.fromarray(fill.astype(np.uint8)).save(root / folder / "a.png")
        assert key() != base
        return
    changed = {"imgsz": (28 + 14 * value, 28), "augment": False, "seed": value, "views": 2 + value,
               "mask_mode": "binary", "ignore_index": 255 - value, "reduce_labels": True,
               "mean": (0.5, 0.5, 0.5 - value / 100), "weights": f"w{value}.pth", "fingerprint": 1.5 + value,
               "layers": 4, "images": True}[change]  # fmt: skip
    assert key(**{change: changed}) != base, change


# --- multi-layer heads --------------------------------------------------------------------------


def test_multilayer_heads_read_the_official_normed_layers(tiny_io: dict) -> None:
    """linear4 and multilayer read the last 4 layers normed by the final LayerNorm, as the official
    get_intermediate_layers(norm=True) gives them (golden outputs of the official code)."""
    from webdino_seg.models.heads import create_head
    from webdino_seg.models.segmentation import SegmentationModel

    backbone = create_backbone("webdino-300m", weights=FIXTURES / "tiny_official.pth", **TINY).eval()
    model = SegmentationModel(backbone, create_head("linear4", 64, 2))
    ref = tiny_io["x2"]
    grid = model.features(ref["input"])
    h, w = ref["input"].shape[-2] // 14, ref["input"].shape[-1] // 14
    expected = torch.cat([p.reshape(1, h, w, 64).permute(0, 3, 1, 2) for p in ref["intermediate_norm"]], 1)
    torch.testing.assert_close(grid, expected, atol=2e-6, rtol=0)


# --- atomic writes ------------------------------------------------------------------------------


def test_checkpoints_are_never_written_at_their_final_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While torch.save writes, the final name still holds the previous version (a kill then loses nothing)."""
    import webdino_seg.models.checkpoint as checkpoint
    from webdino_seg.models.checkpoint import backbone_identity, save_model

    model = load_model(FIXTURES / "run_from_c38c0ff" / "best_model_iou.pth")[0]
    target = tmp_path / "m.pth"
    target.write_bytes(b"previous version")
    seen = []
    real_save = torch.save

    def watching(obj, f, *args, **kwargs):
        seen.append((Path(os.readlink(f"/proc/self/fd/{f.fileno()}")).name, target.read_bytes()))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", watching)
    save_model(target, model, backbone_identity(model.backbone, None, 7), {"class_names": ["a", "b"]})
    (name, during), = seen
    assert name != "m.pth" and name.startswith(".m.pth.") and during == b"previous version"
    assert torch.load(target, weights_only=True)["class_names"] == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]
