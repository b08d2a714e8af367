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


SLOW = pytest.mark.slow  # the other heads in the long run: the default run stays under 3 minutes


@pytest.mark.parametrize(
    ("head", "fine_tune"),
    [
        ("simple", False),
        pytest.param("linear4", False, marks=SLOW),
        pytest.param("multilayer", False, marks=SLOW),
        pytest.param("guided", False, marks=SLOW),
        ("simple", True),
    ],
)
def test_resume_equals_uninterrupted_with_every_stateful_option(
    small: Path, tmp_path: Path, head: str, fine_tune: bool
) -> None:
    """The lr drops at epoch 3, after the resume point: a scheduler that is not restored trains at the wrong rate;
    BatchNorm statistics (linear4), the guided head's image branch and a fine-tuned backbone must all come back."""
    common = {
        "imgsz": (56, 56),
        "head": head,
        "fine_tune": fine_tune,
        "scheduler": True,
        "scheduler_epochs": [3],
        "cache_views": 2,
        "lr": 3e-3,
    }
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
    assert report["per_image_miou"]["worst"][:2] == worst[:2] and len(report["per_image_miou"]["worst"]) == 5


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


def _float_overlay(image: np.ndarray, mask: np.ndarray, alpha: float, colors: np.ndarray | None) -> np.ndarray:
    """The overlay as it was drawn before the cv2 lookup: float blending of the masked pixels."""
    from webdino_seg.utils.overlay import PALETTE, VOID_COLOR

    lut = np.full((256, 3), VOID_COLOR, np.uint8)
    lut[: len(PALETTE if colors is None else colors)] = PALETTE if colors is None else colors
    out = image.copy()
    fg = lut[mask].any(-1)
    blended = (1 - alpha) * image[fg].astype(np.float32) + alpha * lut[mask[fg]]
    out[fg] = (blended + 0.5).astype(np.uint8)
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(1, 12),
    st.sampled_from([0.5, 0.3, 0.45, 0.7, 1 / 3]),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["default", "palette", "black class", "strided"]),
)
def test_overlay_equals_the_float_blend_pixel_for_pixel(
    h: int, w: int, classes: int, alpha: float, seed: int, kind: str
) -> None:
    """Fails if the cv2 lookup overlay differs anywhere from the float blending it replaced (void, classes
    coloured black, colours past the palette, a strided image)."""
    from webdino_seg.utils.overlay import overlay, palette

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, 2 * w if kind == "strided" else w, 3), dtype=np.uint8)
    image = image[:, ::2] if kind == "strided" else image
    mask = rng.integers(0, classes, (h, w)).astype(np.uint8)
    mask[rng.random((h, w)) < 0.1] = 255
    colors = None if kind in ("default", "strided") else palette(classes, background=kind == "palette")
    if kind == "black class":
        colors[rng.integers(0, classes)] = 0
    np.testing.assert_array_equal(overlay(image, mask, alpha, colors), _float_overlay(image, mask, alpha, colors))


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
@given(
    change=st.sampled_from(
        [
            "imgsz",
            "augment",
            "seed",
            "views",
            "mask_mode",
            "ignore_index",
            "reduce_labels",
            "mean",
            "weights",
            "fingerprint",
            "layers",
            "images",
            "image_bytes",
            "mask_bytes",
        ]
    ),
    value=st.integers(1, 7),
)
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
        ds = SegmentationDataset(
            root,
            "train",
            over.get("imgsz", (28, 28)),
            over.get("mean", (0.5, 0.5, 0.5)),
            (0.2, 0.2, 0.2),
            mask_mode=over.get("mask_mode", "ids"),
            augment=over.get("augment", True),
            seed=over.get("seed", 0),
            coding=coding,
        )
        head = SimpleNamespace(layers=over.get("layers", 1))
        model = SimpleNamespace(head=head, needs_image=over.get("images", False))
        identity = {
            "arch": "webdino-tiny",
            "weights": over.get("weights", "random"),
            "seed": 0,
            "fingerprint": over.get("fingerprint", 1.5),
        }
        return cache_key(ds, model, over.get("views", 2), identity)

    base = key()
    assert key() == base  # the same inputs, the same key
    if change in ("image_bytes", "mask_bytes"):
        folder = "train_images" if change == "image_bytes" else "train_masks"
        fill = np.full((8, 8, 3), 9 + value, np.uint8) if change == "image_bytes" else np.full((8, 8), 2 * (value % 2))
        Image.fromarray(fill.astype(np.uint8)).save(root / folder / "a.png")
        assert key() != base
        return
    changed = {
        "imgsz": (28 + 14 * value, 28),
        "augment": False,
        "seed": value,
        "views": 2 + value,
        "mask_mode": "binary",
        "ignore_index": 255 - value,
        "reduce_labels": True,
        "mean": (0.5, 0.5, 0.5 - value / 100),
        "weights": f"w{value}.pth",
        "fingerprint": 1.5 + value,
        "layers": 4,
        "images": True,
    }[change]
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
    ((name, during),) = seen
    assert name != "m.pth" and name.startswith(".m.pth.") and during == b"previous version"
    assert torch.load(target, weights_only=True)["class_names"] == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]


# --- the baseline ----------------------------------------------------------------------------------


def test_the_baseline_equals_predicting_the_majority_class_everywhere() -> None:
    """Against the confusion matrix of actually predicting the majority class everywhere; a class with a single
    pixel still counts as present (classes that never appear do not)."""
    from webdino_seg.utils.metrics import ConfusionMatrix

    truth = torch.tensor([0] * 70 + [1] * 29 + [3] * 1 + [255] * 5)  # class 2 never appears; 255 is void
    cm = ConfusionMatrix(4)
    cm.update(torch.zeros_like(truth), truth)
    everywhere = ConfusionMatrix(4)
    everywhere.update(torch.zeros_like(truth), truth)
    base = cm.baseline()
    assert base["class"] == 0
    assert base["pixel_accuracy"] == pytest.approx(0.70) == everywhere.pixel_accuracy()
    assert base["miou"] == pytest.approx(0.70 / 3)  # IoU 0.7 for class 0, 0 for classes 1 and 3; class 2 is absent
    assert base["miou"] == pytest.approx(everywhere.miou())


# --- architectures and identities ----------------------------------------------------------------


def test_each_head_has_the_parameters_the_readme_states() -> None:
    """The README's heads table (tiny backbone, 2 classes): any change to a layer's size or kernel shows here."""
    from webdino_seg import create_model

    readme = {"simple": 148_226, "linear4": 1_026, "multilayer": 1_704_386, "guided": 174_917}
    for head, count in readme.items():
        assert sum(p.numel() for p in create_model("webdino-tiny", head=head).head.parameters()) == count, head


def test_a_checkpoint_records_hf_folder_weights_by_their_safetensors() -> None:
    import hashlib

    from webdino_seg.models.checkpoint import backbone_identity

    weights = FIXTURES / "tiny_hf"  # a folder: its model.safetensors is what is hashed
    identity = backbone_identity(create_backbone("webdino-300m", weights=weights, **TINY), str(weights), 0)
    assert identity["sha256"] == hashlib.sha256((weights / "model.safetensors").read_bytes()).hexdigest()
    assert identity["format"] == "hf-v4" and identity["arch"] == "webdino-300m"


def test_a_fine_tuned_checkpoint_predicts_as_the_model_it_saved(small: Path, tmp_path: Path) -> None:
    """The backbone travels in a fine-tuned checkpoint: loaded back, it gives the same logits as the state train
    saved (last.pth holds the same weights), computed here from the state dicts."""
    from webdino_seg.models.builder import create_model

    run = train(tiny_config(small, tmp_path / "ft", imgsz=(56, 56), epochs=1, fine_tune=True), log=lambda *_: None)
    loaded, _ = load_model(run / "final_model.pth")
    assert not any(p.is_meta for p in loaded.parameters())
    state = torch.load(run / "last.pth", weights_only=True)
    reference = create_model("webdino-tiny", fine_tune=True)
    reference.backbone.load_state_dict(state["backbone"])
    reference.head.load_state_dict(state["head"])
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), reference.eval()(x))


def test_the_recorded_valid_loss_is_the_mean_per_labelled_pixel(small: Path, tmp_path: Path) -> None:
    """metrics.csv's valid loss against cross-entropy computed here over every labelled pixel of the valid split
    (the final model, the valid split at the training size)."""
    import torch.nn.functional as F

    from webdino_seg.data.datasets import SegmentationDataset
    from webdino_seg.models.variants import IMAGENET_MEAN, IMAGENET_STD

    run = train(tiny_config(small, tmp_path / "r", imgsz=(56, 56), epochs=1), log=lambda *_: None)
    model, _ = load_model(run / "final_model.pth")
    valid = SegmentationDataset(small, "valid", (56, 56), IMAGENET_MEAN, IMAGENET_STD, mask_mode="ids")
    total, pixels = 0.0, 0
    with torch.no_grad():
        for image, mask in valid:
            logits = F.interpolate(model.eval()(image[None]), size=mask.shape, mode="bilinear", align_corners=False)
            total += float(F.cross_entropy(logits, mask[None], ignore_index=255, reduction="sum"))
            pixels += int((mask != 255).sum())
    assert float(metrics_rows(run)[-1]["valid_loss"]) == pytest.approx(total / pixels, rel=1e-5)


def test_the_predictor_takes_rgb_rgba_and_grey_and_refuses_other_arrays(ckpt: Path) -> None:
    from webdino_seg import Predictor

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((30, 40, 1), 7, np.uint8)], 2)
    assert np.array_equal(predictor.predict(rgba), predictor.predict(rgb))  # alpha dropped
    assert predictor.predict(rgb[..., 0]).shape == (30, 40)  # grey is repeated into RGB
    for shape in ((30, 40, 5), (30, 40, 2), (2, 30, 40, 3)):
        with pytest.raises(ValueError, match="expected an"):
            predictor.predict(np.zeros(shape, np.uint8))


def test_the_palette_past_the_fixed_colours_is_the_voc_colour_map() -> None:
    """Classes 7 and on take the PASCAL VOC devkit's colour map as the devkit lists it (its entries 1-6 and 8-10;
    entry 7, grey, is void's colour here)."""
    from webdino_seg.utils.overlay import palette

    voc = [
        (128, 0, 0),
        (0, 128, 0),
        (128, 128, 0),
        (0, 0, 128),
        (128, 0, 128),
        (0, 128, 128),
        (64, 0, 0),
        (192, 0, 0),
        (64, 128, 0),
    ]
    colours = [tuple(c) for c in palette(16).tolist()]
    assert colours[:2] == [(0, 0, 0), (255, 0, 160)] and colours[7:] == voc
    assert len(set(colours)) == 16 and (128, 128, 128) not in colours  # grey is void's
