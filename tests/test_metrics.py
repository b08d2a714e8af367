"""Confusion-matrix metrics against an independent computation, including absent classes and void."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from webdino_seg.utils.metrics import VOID, ConfusionMatrix, boundary_band


def _reference(preds: list[np.ndarray], targets: list[np.ndarray], n: int) -> tuple[float, float, list[float]]:
    """Pooled IoU per class written the slow way, straight from the definition."""
    p = np.concatenate([x.ravel() for x in preds])
    t = np.concatenate([x.ravel() for x in targets])
    keep = t != 255
    p, t = p[keep], t[keep]
    ious = []
    for c in range(n):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        ious.append(inter / union if union else float("nan"))
    acc = float(np.mean(p == t)) if len(t) else float("nan")
    return float(np.nanmean(ious)), acc, ious


def test_hand_made_masks_with_absent_class_and_void() -> None:
    t1 = np.array([[0, 0, 1], [1, 255, 2]])
    p1 = np.array([[0, 1, 1], [1, 2, 2]])
    t2 = np.array([[0, 0], [0, 255]])  # classes 1 and 2 absent from this batch
    p2 = np.array([[0, 0], [1, 1]])
    cm = ConfusionMatrix(4)  # class 3 never occurs anywhere: NaN, left out of the mean
    for p, t in ((p1, t1), (p2, t2)):
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
    miou, acc, ious = _reference([p1, p2], [t1, t2], 4)
    # by hand: 8 non-void pixels; class 0: inter 3, union 5; class 1: inter 2, union 4; class 2: 1/1
    assert np.allclose(ious[:3], [3 / 5, 2 / 4, 1.0]) and np.isnan(ious[3])
    assert cm.iou()[:3].tolist() == ious[:3] and torch.isnan(cm.iou()[3])
    assert abs(cm.miou() - miou) < 1e-12 and abs(cm.miou() - (3 / 5 + 0.5 + 1) / 3) < 1e-12
    assert abs(cm.pixel_accuracy() - 6 / 8) < 1e-12 and abs(acc - 6 / 8) < 1e-12


def test_whole_split_is_not_a_mean_of_batches() -> None:
    # batch 1: a big person predicted perfectly; batch 2: a tiny person missed
    t1, p1 = np.ones((10, 10), int), np.ones((10, 10), int)
    t1[0, 0] = p1[0, 0] = 0
    t2, p2 = np.zeros((10, 10), int), np.zeros((10, 10), int)
    t2[0, 0] = 1
    cm = ConfusionMatrix(2)
    per_batch = []
    for p, t in ((p1, t1), (p2, t2)):
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
        per_batch.append(_reference([p], [t], 2)[0])
    assert abs(cm.miou() - _reference([p1, p2], [t1, t2], 2)[0]) < 1e-12
    assert abs(cm.miou() - float(np.mean(per_batch))) > 0.1


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 5).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.tuples(
                    arrays(np.int64, (3, 4), elements=st.integers(0, n - 1)),
                    arrays(np.int64, (3, 4), elements=st.sampled_from([*range(n), 255])),
                ),
                min_size=1,
                max_size=4,
            ),
        )
    )
)
def test_matches_reference_on_random_batches(case) -> None:
    n, batches = case
    cm = ConfusionMatrix(n)
    for p, t in batches:
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
    miou, acc, ious = _reference([p for p, _ in batches], [t for _, t in batches], n)
    np.testing.assert_allclose(cm.iou().numpy(), np.array(ious), equal_nan=True)
    assert cm.mat.sum() == sum(int((t != 255).sum()) for _, t in batches)
    if not np.isnan(acc):
        assert abs(cm.pixel_accuracy() - acc) < 1e-12
        assert abs(cm.miou() - miou) < 1e-12


def test_the_boundary_band_keeps_the_pixels_near_a_class_boundary() -> None:
    mask = torch.zeros(12, 12, dtype=torch.int64)
    mask[4:8, 4:8] = 1  # a 4x4 square
    mask[0, :] = VOID  # unlabelled pixels stay void and make no boundary
    band0 = boundary_band(mask, 0)
    kept = band0 != VOID
    assert kept.sum() == 12 + 16  # the square's 12 rim pixels and the 16 outside them across an edge (no diagonals)
    ring_in = torch.zeros_like(kept)
    ring_in[4:8, 4:8] = True
    ring_in[5:7, 5:7] = False
    assert kept[ring_in].all() and not kept[5:7, 5:7].any()
    assert (band0[kept] == mask[kept]).all() and not kept[0].any()
    band2 = boundary_band(mask, 2)
    assert (band2[5:7, 5:7] == 1).all() and (band2[11, :] == VOID).all() and (band2[2, 4] == 0)
    # a prediction one pixel off: the mIoU over the whole image barely moves, the band's falls
    big = torch.zeros(60, 60, dtype=torch.int64)
    big[15:45, 15:45] = 1
    pred = torch.roll(big, 1, dims=1)
    whole, band = ConfusionMatrix(2), ConfusionMatrix(2)
    whole.update(pred, big)
    band.update(pred, boundary_band(big, 1))
    assert whole.miou() > 0.95 and band.miou() < 0.8
    perfect = ConfusionMatrix(2)
    perfect.update(mask.clamp(max=1), boundary_band(mask, 1))
    assert perfect.miou() == 1.0
    with pytest.raises(ValueError, match="band width"):
        boundary_band(mask, -1)


def test_the_bootstrap_interval_is_the_percentiles_of_images_drawn_again() -> None:
    """Against the definition written out: each draw picks N images with replacement, sums their confusion
    matrices and scores the sum; the interval is the 2.5th and 97.5th percentile of those scores."""
    import numpy as np

    from webdino_seg.utils.metrics import bootstrap_miou

    per_image = torch.randint(0, 40, (30, 3, 3), generator=torch.Generator().manual_seed(4))
    per_image[::7, 2] = 0  # some images without class 2
    generator, scores = torch.Generator().manual_seed(0), []
    for _ in range(10):  # drawn 100 at a time, as the library draws them
        for picks in torch.randint(0, 30, (100, 30), generator=generator):
            cm = ConfusionMatrix(3)
            cm.mat = per_image[picks].sum(0)
            scores.append(cm.miou())
    expected = np.percentile(scores, [2.5, 97.5])
    low, high = bootstrap_miou(per_image)
    assert np.allclose([low, high], expected, rtol=0, atol=1e-12)
    whole = ConfusionMatrix(3)
    whole.mat = per_image.sum(0)
    assert low < whole.miou() < high
    wider = bootstrap_miou(per_image[:8])  # fewer images: less certain
    assert wider[1] - wider[0] > high - low
    one = ConfusionMatrix(3)
    one.mat = per_image[0]
    assert bootstrap_miou(per_image[:1]) == pytest.approx((one.miou(), one.miou()))


def test_evaluate_and_train_state_the_interval(ckpt, prepared, tmp_path, capsys) -> None:
    import json

    from webdino_seg.app.cli import main

    out = tmp_path / "e.json"
    assert main(["evaluate", "--data", str(prepared), "--model", str(ckpt), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    low, high = report["miou_ci"]
    assert low <= report["miou"] <= high and report["ci"]["resamples"] == 1000
    assert f"[{low:.4f}, {high:.4f}] (95% interval, bootstrap over the 6 images)" in capsys.readouterr().out
