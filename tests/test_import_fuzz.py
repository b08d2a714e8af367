"""Every label importer (COCO, YOLO, LabelMe, VOC) fed generated files, honest and hostile (hypothesis): it never
raises anything but a one-line data error, never takes more than a few seconds on a 16x12 image, and never
succeeds with a mask other than the one an independent reference draws from the same file by the formats'
rules. A reference that meets something the rules forbid (NaN, a coordinate far outside, a negative run, an id
given twice...) says the import must be refused. Bounded in the default run; `-m slow` runs a longer profile."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as coco_mask
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from webdino_seg.data.datasets import DataError
from webdino_seg.data.formats.prepare import prepare_dataset
from webdino_seg.data.labels import LabelError

W, H = 16, 12
MARGIN = 0.5  # the rule: coordinates within half the image's size of it
QUICK = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
HOSTILE_NUMBERS = [math.nan, math.inf, -math.inf, 1e12, -3e9, 1e300]


class Refused(Exception):
    """The reference's verdict: these files break a rule, so the import must fail."""


def _photo(path: Path, w: int = W, h: int = H) -> None:
    """A flat photo whose grey level comes from its name: two files are never the same image (refused across
    splits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), sum(path.name.encode()) % 200 + 20, np.uint8)).save(path)


def _run(fmt: str, source: Path, reference) -> None:
    """Import `source`, and compare with `reference()` (masks by file name, or `Refused`)."""
    out = source.parent / "out"
    try:
        expected = reference()
    except Refused:
        expected = None
    started = time.perf_counter()
    try:
        prepare_dataset(fmt, source, out, valid_fraction=0.5, log=lambda *_: None)
    except (DataError, LabelError) as err:
        message = str(err)
        event("refused")
        assert expected is None, f"refused a valid file: {message}"
        assert "\n" not in message and len(message) < 600, message
    else:
        event("imported")
        assert expected is not None, "imported files the rules refuse"
        got = {p.name: np.asarray(Image.open(p)) for p in out.glob("*_masks/*.png")}
        assert got.keys() == expected.keys()
        for name, mask in expected.items():
            np.testing.assert_array_equal(got[name], mask, err_msg=name)
    assert time.perf_counter() - started < 5


def _within(points: list[float], w: float, h: float) -> None:
    """The coordinate rule of every format (flat x, y list)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in points):
        raise Refused
    if not all(math.isfinite(v) for v in points):
        raise Refused
    for values, size in ((points[0::2], w), (points[1::2], h)):
        if any(not -MARGIN * size <= v <= (1 + MARGIN) * size for v in values):
            raise Refused


def _fill(mask: np.ndarray, flat: list[float], value: int, scale: tuple[float, float] = (1, 1)) -> None:
    pts = np.round(np.array(flat, np.float64).reshape(-1, 2) * scale).astype(np.int32)
    cv2.fillPoly(mask, [pts.reshape(-1, 1, 2)], value)


coordinate = st.one_of(st.integers(-3, 14), st.floats(-3, 14), st.floats(-9, 26))
polygon = st.one_of(st.lists(coordinate, min_size=6, max_size=12), st.lists(coordinate, max_size=7))


def _rarely(draw) -> bool:
    """True one time in four."""
    return draw(st.integers(0, 3)) == 0


def _hostile(draw, values: list) -> list:
    """`values` with, one time in four, one element replaced by a hostile one."""
    if values and _rarely(draw):
        values = list(values)
        values[draw(st.integers(0, len(values) - 1))] = draw(st.sampled_from([*HOSTILE_NUMBERS, "1", None, True]))
    return values


# --- COCO ------------------------------------------------------------------------------------------------------


def _rle_string(counts: list[int]) -> str:
    """COCO's compressed counts (pycocotools' rleToString), written here from its description."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c, x = x & 0x1F, x >> 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    runs = np.diff(np.concatenate([[0], edges])).tolist()
    return runs if len(runs) == 1 or flat[0] == 0 else [0, *runs]


@st.composite
def coco_segmentation(draw):
    kind = draw(
        st.sampled_from(["polygons"] * 4 + ["rle-list", "rle-list", "rle-string", "rle-string", "none", "junk"])
    )
    if kind == "polygons":
        return [_hostile(draw, draw(polygon)) for _ in range(draw(st.integers(0, 2)))]
    if kind == "none":
        return draw(st.sampled_from([None, []]))
    if kind == "junk":
        return draw(st.sampled_from(["polygon", 7, {"points": [1, 2]}]))
    mask = np.array(draw(st.lists(st.booleans(), min_size=W * H, max_size=W * H))).reshape(H, W)
    runs = _runs(mask)
    size = draw(st.sampled_from([[W, H], [H, W + 1]])) if _rarely(draw) else [H, W]
    if kind == "rle-list":
        change = draw(st.sampled_from(["negative", "short"])) if _rarely(draw) else "none"
        if change == "negative" and len(runs) > 1:
            runs = [runs[0] + 5, -5, *runs[1:]]
        elif change == "short":
            runs = runs[:-1]
        return {"size": size, "counts": runs}
    text = _rle_string(runs)
    text += draw(st.sampled_from(["P", "~", " "])) if _rarely(draw) else ""  # dangling, or outside '0'-'o'
    return {"size": size, "counts": text}


@st.composite
def coco_files(draw) -> dict:
    images = [
        {"id": 1, "file_name": "a.jpg", "width": W, "height": H},
        {"id": 2, "file_name": "b.jpg", "width": W, "height": H},
    ]
    change = draw(st.sampled_from(["same id", "same name", "size", "huge", "no height"])) if _rarely(draw) else ""
    if change == "same id":
        images[1]["id"] = 1
    elif change == "same name":
        images[1]["file_name"] = "a.jpg"
    elif change == "size":
        images[1]["width"] = W + 1
    elif change == "huge":
        images[1] |= {"width": 300_000, "height": 200_000}
    elif change == "no height":
        del images[1]["height"]
    ids = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3, unique=not _rarely(draw)))
    names = draw(
        st.lists(
            st.sampled_from(["person", "dog", "cat"]), min_size=len(ids), max_size=len(ids), unique=not _rarely(draw)
        )
    )
    categories = [{"id": i, "name": n} for i, n in zip(ids, names, strict=True)]
    ids = [c["id"] for c in categories]
    annotations = [
        {
            "id": 100 + i,
            "image_id": draw(st.sampled_from([1, 2, 2, 9])),
            "category_id": 8 if _rarely(draw) and _rarely(draw) else draw(st.sampled_from(ids)),
            "iscrowd": draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2])),
            "segmentation": draw(coco_segmentation()),
        }
        for i in range(draw(st.integers(0, 4)))
    ]
    return {"images": images, "categories": categories, "annotations": annotations}


def _coco_reference(data: dict) -> dict[str, np.ndarray]:
    images, categories = data["images"], data["categories"]
    if any("height" not in r for r in images) or len({r["id"] for r in images}) < len(images):
        raise Refused
    if len({r["file_name"] for r in images}) < len(images) or any((r["width"], r["height"]) != (W, H) for r in images):
        raise Refused
    if len({c["id"] for c in categories}) < len(categories) or len({c["name"] for c in categories}) < len(categories):
        raise Refused
    index = {c["id"]: i + 1 for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    masks = {r["id"]: np.zeros((H, W), np.uint8) for r in images}
    for ann in data["annotations"]:
        if ann["category_id"] not in index or ann["iscrowd"] not in (0, 1):
            raise Refused
        seg = ann["segmentation"]
        if ann["image_id"] not in masks or seg in (None, []):
            continue
        value = 255 if ann["iscrowd"] else index[ann["category_id"]]
        if isinstance(seg, list):
            for flat in seg:
                if not isinstance(flat, list) or len(flat) % 2 or len(flat) < 6:
                    raise Refused
                _within(flat, W, H)
            for flat in seg:  # as COCO's own tools draw a polygon
                drawn = coco_mask.decode(coco_mask.frPyObjects([[float(v) for v in flat]], H, W))[:, :, 0]
                masks[ann["image_id"]][drawn.astype(bool)] = value
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if seg["size"] != [H, W]:
                raise Refused
            counts = seg["counts"]
            if isinstance(counts, str):
                if counts != counts.rstrip("P~ "):  # a dangling continuation, or outside the alphabet
                    raise Refused
                counts = _string_runs(counts)
            if any(c < 0 for c in counts) or sum(counts) != H * W:
                raise Refused
            region = np.repeat(np.arange(len(counts)) % 2 == 1, counts).reshape(W, H).T
            masks[ann["image_id"]][region] = value
        else:
            raise Refused
    return {f"{Path(r['file_name']).stem}.png": masks[r["id"]] for r in images}


def _string_runs(text: str) -> list[int]:
    """The runs of a compressed RLE string, read by COCO's description (re-encoded, to check the reading)."""
    runs, i = [], 0
    while i < len(text):
        j = i
        while (ord(text[j]) - 48) & 0x20:
            j += 1
        value = 0
        for k, ch in enumerate(text[i : j + 1]):
            value |= ((ord(ch) - 48) & 0x1F) << (5 * k)
        if (ord(text[j]) - 48) & 0x10:
            value -= 1 << (5 * (j - i + 1))
        runs.append(value + (runs[-2] if len(runs) > 2 else 0))
        i = j + 1
    assert _rle_string(runs) == text
    return runs


def _coco_case(data: dict) -> None:
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "coco"
        for name in ("a.jpg", "b.jpg"):
            _photo(root / name)
        source = root / "instances.json"
        source.write_text(json.dumps(data))
        _run("coco", source, lambda: _coco_reference(data))


@QUICK
@given(coco_files())
def test_coco_fuzz(data: dict) -> None:
    _coco_case(data)


@pytest.mark.slow
@LONG
@given(coco_files())
def test_coco_fuzz_long(data: dict) -> None:
    _coco_case(data)


# --- YOLO ------------------------------------------------------------------------------------------------------

share = st.one_of(st.floats(0, 1), st.floats(-0.3, 1.3), st.integers(0, 1), st.floats(-0.7, 1.7))


@st.composite
def yolo_lines(draw) -> list[list]:
    lines = []
    for _ in range(draw(st.integers(0, 3))):
        cls = draw(st.sampled_from([2, -1])) if _rarely(draw) else draw(st.integers(0, 1))
        count = draw(st.sampled_from([5, 2, 0])) if _rarely(draw) else draw(st.sampled_from([4, 6, 8, 10]))
        lines.append([cls, *_hostile(draw, draw(st.lists(share, min_size=count, max_size=count)))])
    return lines


def _yolo_reference(lines: list[list], names: int) -> dict[str, np.ndarray]:
    mask = np.zeros((H, W), np.uint8)
    for cls, *coords in lines:
        if not 0 <= cls < names or "x" in coords:
            raise Refused
        if len(coords) == 4:
            cx, cy, bw, bh = coords
            coords = [
                cx - bw / 2,
                cy - bh / 2,
                cx + bw / 2,
                cy - bh / 2,
                cx + bw / 2,
                cy + bh / 2,
                cx - bw / 2,
                cy + bh / 2,
            ]
        if len(coords) % 2 or len(coords) < 6:
            raise Refused
        _within(coords, 1, 1)
        _fill(mask, coords, cls + 1, (W, H))
    return {"a.png": mask}


def _yolo_case(lines: list[list]) -> None:
    # what a text file can hold: a hostile None or True is a word, "1" the number it reads as
    lines = [[1.0 if v == "1" else "x" if v is None or isinstance(v, bool) else v for v in line] for line in lines]
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "yolo"
        _photo(root / "images" / "train" / "a.png")
        _photo(root / "images" / "val" / "b.png")
        (root / "labels" / "train").mkdir(parents=True)
        text = "".join(" ".join(repr(v) if isinstance(v, float) else str(v) for v in line) + "\n" for line in lines)
        (root / "labels" / "train" / "a.txt").write_text(text)
        (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [person, car]\n")

        def reference() -> dict[str, np.ndarray]:
            return _yolo_reference(lines, 2) | {"b.png": np.zeros((H, W), np.uint8)}

        _run("yolo", root / "data.yaml", reference)


@QUICK
@given(yolo_lines())
def test_yolo_fuzz(lines: list[list]) -> None:
    _yolo_case(lines)


@pytest.mark.slow
@LONG
@given(yolo_lines())
def test_yolo_fuzz_long(lines: list[list]) -> None:
    _yolo_case(lines)


# --- LabelMe ---------------------------------------------------------------------------------------------------

KINDS = ["polygon", "polygon", "rectangle", "circle", "line", "point", None]


@st.composite
def labelme_files(draw) -> dict:
    shapes = []
    for _ in range(draw(st.integers(0, 4))):
        points = draw(
            st.lists(st.tuples(coordinate, coordinate).map(list), min_size=0 if _rarely(draw) else 3, max_size=5)
        )
        if points and _rarely(draw):
            points[draw(st.integers(0, len(points) - 1))][draw(st.integers(0, 1))] = draw(
                st.sampled_from([*HOSTILE_NUMBERS, "1", None])
            )
        label = 3 if _rarely(draw) and _rarely(draw) else draw(st.sampled_from(["road", "car"]))
        kind = "mask" if _rarely(draw) and _rarely(draw) else draw(st.sampled_from(KINDS))
        shape = {"label": label, "points": points, "shape_type": kind}
        shapes.append(shape)
    size = draw(st.sampled_from([(W, H), (0, W)])) if _rarely(draw) else (H, W)
    return {"shapes": shapes, "imagePath": "a.jpg", "imageHeight": size[0], "imageWidth": size[1]}


def _labelme_reference(data: dict) -> dict[str, np.ndarray]:
    if (data["imageHeight"], data["imageWidth"]) != (H, W) or any(
        not isinstance(s["label"], str) for s in data["shapes"]
    ):
        raise Refused
    names = ["background", *sorted({s["label"] for s in data["shapes"]})]
    mask = np.zeros((H, W), np.uint8)
    least = {"polygon": 3, "rectangle": 2, "circle": 2}
    for shape in data["shapes"]:
        kind = shape["shape_type"] or "polygon"
        if kind in ("line", "point"):
            continue
        if kind not in least or len(shape["points"]) < least[kind]:
            raise Refused
        _within([v for p in shape["points"] for v in p], W, H)
    for shape in data["shapes"]:
        kind, points, value = shape["shape_type"] or "polygon", shape["points"], names.index(shape["label"])
        if kind == "polygon":
            _fill(mask, [v for p in points for v in p], value)
        elif kind == "rectangle":
            (x0, y0), (x1, y1) = points[:2]
            _fill(mask, [x0, y0, x1, y0, x1, y1, x0, y1], value)
        elif kind == "circle":
            (cx, cy), (ex, ey) = points[:2]
            cv2.circle(mask, (round(cx), round(cy)), round(float(np.hypot(ex - cx, ey - cy))), value, -1)
    return {"a.png": mask}


def _labelme_case(data: dict) -> None:
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "lm"
        _photo(root / "a.jpg")
        (root / "a.json").write_text(json.dumps(data))
        _run("labelme", root, lambda: _labelme_reference(data))


@QUICK
@given(labelme_files())
def test_labelme_fuzz(data: dict) -> None:
    _labelme_case(data)


@pytest.mark.slow
@LONG
@given(labelme_files())
def test_labelme_fuzz_long(data: dict) -> None:
    _labelme_case(data)


# --- VOC -------------------------------------------------------------------------------------------------------


@st.composite
def voc_masks(draw) -> tuple[np.ndarray, str, tuple[int, int]]:
    values = draw(st.lists(st.sampled_from([0, 0, 1, 15, 20, 255]), min_size=W * H, max_size=W * H))
    if _rarely(draw):
        values[draw(st.integers(0, W * H - 1))] = draw(st.sampled_from([21, 200]))
    mode = "L" if _rarely(draw) else "P"
    size = (H, W) if _rarely(draw) else (W, H)
    return np.array(values, np.uint8).reshape(size[1], size[0]), mode, size


def _voc_case(case: tuple[np.ndarray, str, tuple[int, int]]) -> None:
    values, mode, _ = case
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "VOC2012"
        _photo(root / "JPEGImages" / "a.jpg")
        (root / "SegmentationClass").mkdir(parents=True)
        label = Image.frombytes(mode, values.shape[::-1], values.tobytes())
        if mode == "P":
            label.putpalette([c for i in range(256) for c in (i, i, i)])
        label.save(root / "SegmentationClass" / "a.png")

        def reference() -> dict[str, np.ndarray]:
            if mode != "P" or values.shape != (H, W) or np.isin(values, [21, 200]).any():
                raise Refused
            return {"a.png": values}

        try:
            _run("voc", root, reference)
        finally:
            shutil.rmtree(root, ignore_errors=True)


@QUICK
@given(voc_masks())
def test_voc_fuzz(case) -> None:
    _voc_case(case)


@pytest.mark.slow
@LONG
@given(voc_masks())
def test_voc_fuzz_long(case) -> None:
    _voc_case(case)
