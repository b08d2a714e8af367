"""``coco``: COCO instance annotations (one JSON: ``images``, ``annotations`` with polygon or RLE
``segmentation``, ``categories``), as described at cocodataset.org/#format-data.

Category ids become classes 1..K in id order (0 is background). Annotations are drawn in file order,
later ones over earlier ones; a crowd region (``iscrowd`` 1) becomes ignore (255) over whatever it covers.

The whole file is checked before any pixel is drawn: ids and file names unique, every field of its kind,
coordinates finite and near the image, run-lengths well formed, and each declared size equal to the real
image's upright size. Annotations that cannot be drawn (no segmentation, or one of the image of no record)
are left out and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ...utils.metrics import VOID
from ...utils.safetext import cut
from ..datasets import DataError
from ..images import ImageError, upright_size
from ..labels import Classes
from .readers import Source, register
from .shapes import fill_coco_polygons, points_problem, rle_decode, rle_problem
from .writer import Example


def _image_path(file_name: str, folders: list[Path]) -> Path:
    for folder in folders:
        if (folder / file_name).is_file():
            return folder / file_name
    return folders[0] / file_name


def _draw(mask: np.ndarray, annotations: list[dict], index: dict[int, int]) -> np.ndarray:
    for ann in annotations:
        value = VOID if ann.get("iscrowd") else index[ann["category_id"]]
        seg = ann["segmentation"]
        if isinstance(seg, list):
            fill_coco_polygons(mask, [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg], value)
        else:
            mask[rle_decode(seg)] = value
    return mask


def _fields(record: object, kinds: dict[str, type], what: str, where: str) -> dict:
    """`record` when it is a dict with each of `kinds`' keys of its kind; else a `DataError`."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: {what} {cut(record, 60)} is not an object")
    for key, kind in kinds.items():
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            label = f"{what} {cut(record.get('id'), 40)}" if "id" in record and key != "id" else what
            raise DataError(
                f"{where}: {label} has {key} {cut(value, 60)}; it must be {'an integer' if kind is int else 'a string'}"
            )
    return record


def _unique(values: list, what: str, where: str) -> None:
    counts = Counter(values)
    twice = next((v for v, n in counts.items() if n > 1), None)
    if twice is not None:
        raise DataError(f"{where}: {what} {cut(twice, 60)} is given {counts[twice]} times; each must be unique")


def _check_segmentation(ann: dict, height: int, width: int, where: str) -> bool:
    """Whether `ann` has a segmentation to draw (False: none, left out); a malformed one is a `DataError`."""
    seg = ann.get("segmentation")
    label = f"{where}: annotation {cut(ann.get('id'), 40)}"
    if seg is None or seg == []:
        return False
    if isinstance(seg, list):
        for polygon in seg:
            problem = points_problem(polygon, width, height)
            if problem:
                raise DataError(f"{label}: polygon {problem}")
        return True
    if isinstance(seg, dict):
        problem = rle_problem(seg, height, width)
        if problem:
            raise DataError(f"{label}: {problem}")
        return True
    raise DataError(f"{label}: segmentation {cut(seg, 60)} is neither polygons (a list) nor an RLE (an object)")


def _load(source: Path) -> tuple[list[dict], list[dict], list[dict]]:
    try:
        data = json.loads(source.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{source}: not a COCO annotation file ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{source}: not a COCO annotation file (expected an object with images and categories)")
    parts = []
    for key in ("images", "annotations", "categories"):
        value = data.get(key, [] if key == "annotations" else None)
        if not isinstance(value, list):
            raise DataError(f"{source}: not a COCO annotation file ({key} is {cut(value, 40)}, not a list)")
        parts.append(value)
    return parts[0], parts[1], parts[2]


def _image_sizes(records: list[dict], source: Path, images: Path | None) -> dict[int, tuple[int, int, Path]]:
    """Each image record's (height, width, file), the file found and its upright size checked against the
    record's."""
    where = str(source)
    tail = source.stem.split("_")[-1]  # instances_train2017.json: its images in train2017/, beside or one up
    folders = (
        [images]
        if images
        else [source.parent, source.parent / "images", source.parent / tail, source.parent.parent / tail]
    )
    sizes = {}
    for rec in records:
        path = _image_path(rec["file_name"], folders)
        try:
            real = upright_size(path)
        except ImageError as err:
            hint = "" if images else " (pass --images FOLDER where the images are elsewhere)"
            raise DataError(f"{where}: image {rec['id']} ({rec['file_name']}): {err}{hint}") from None
        if (rec["width"], rec["height"]) != real:
            raise DataError(
                f"{where}: image {rec['id']} ({rec['file_name']}) is declared {rec['width']}x"
                f"{rec['height']}, the file is {real[0]}x{real[1]} upright"
            )
        sizes[rec["id"]] = (rec["height"], rec["width"], path)
    return sizes


def read_coco(source: Path, images: Path | None = None, log=print) -> tuple[list[Example], Classes]:
    """The examples of one COCO JSON, images found in `images` (default: beside the JSON, or in images/ there),
    after checking the whole file; what is left out is said through `log`."""
    records, annotations, categories = _load(source)
    where = str(source)
    categories = sorted(
        (_fields(c, {"id": int, "name": str}, "category", where) for c in categories), key=lambda c: c["id"]
    )
    _unique([c["id"] for c in categories], "category id", where)
    _unique([c["name"] for c in categories], "category name", where)
    index = {c["id"]: i + 1 for i, c in enumerate(categories)}
    kinds = {"id": int, "file_name": str, "height": int, "width": int}
    records = [_fields(r, kinds, "image", where) for r in records]
    for key in ("id", "file_name"):
        _unique([r[key] for r in records], f"image {key}", where)
    sizes = _image_sizes(records, source, images)
    by_image: dict[int, list[dict]] = {}
    dropped = Counter()
    for ann in annotations:
        ann = _fields(ann, {"image_id": int, "category_id": int}, "annotation", where)
        if ann["category_id"] not in index:
            raise DataError(
                f"{where}: annotation {cut(ann.get('id'), 40)} has category {ann['category_id']}, "
                "not listed in categories"
            )
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DataError(
                f"{where}: annotation {cut(ann.get('id'), 40)} has iscrowd {cut(ann['iscrowd'], 20)}; it must be 0 or 1"
            )
        if ann["image_id"] not in sizes:
            dropped["of an image id with no image record"] += 1
            continue
        height, width, _ = sizes[ann["image_id"]]
        if not _check_segmentation(ann, height, width, where):
            dropped["without a segmentation"] += 1
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    for why, count in dropped.items():
        log(f"note: {source}: {count} annotation(s) {why} were left out")
    examples = []
    for rec in records:
        height, width, path = sizes[rec["id"]]
        anns = by_image.get(rec["id"], [])
        draw = lambda h=height, w=width, anns=anns: _draw(np.zeros((h, w), np.uint8), anns, index)  # noqa: E731
        examples.append(Example(path, draw, None, Path(rec["file_name"]).name))
    return examples, Classes(("background", *(c["name"] for c in categories)))


SPLIT_WORDS = (("train", "train"), ("val", "valid"), ("test", "test"))  # in a file's or folder's name


def coco_files(root: Path | list[Path]) -> list[tuple[Path, str]]:
    """The COCO files of a folder (or the files given) and the split of each: Roboflow's ``train/``, ``valid/``,
    ``test/`` each with ``_annotations.coco.json``, or JSONs whose names say their split
    (``instances_val2017.json``)."""
    if isinstance(root, list):
        return [(path, _split_of(path)) for path in root]
    found = [
        (root / name / "_annotations.coco.json", split)
        for name, split in (("train", "train"), ("valid", "valid"), ("val", "valid"), ("test", "test"))
        if (root / name / "_annotations.coco.json").is_file()
    ]
    if found:
        return found
    for path in sorted(root.glob("*.json")) or sorted(root.glob("annotations/*.json")):
        found.append((path, _split_of(path)))
    if not found:
        raise DataError(
            f"{root}: no COCO files: expected train/_annotations.coco.json (Roboflow) or JSONs named by "
            "split (instances_train2017.json, instances_val2017.json)"
        )
    return found


def _split_of(path: Path) -> str:
    """The split a COCO file's name says (train, val or test), or a `DataError`."""
    split = next((s for word, s in SPLIT_WORDS if word in path.stem.lower()), None)
    if split is None:
        raise DataError(
            f"{path}: among several COCO files, each file's name says its split (train, val or test, e.g. "
            "instances_val2017.json); or pass the one file as --source"
        )
    return split


def read_coco_splits(root: Path | list[Path], images: Path | None = None, log=print) -> tuple[list[Example], Classes]:
    """The examples of every COCO file of a folder, or of the files given (`coco_files`), each keeping its file's
    split; the files must list the same categories."""
    examples: list[Example] = []
    first: tuple[Path, Classes] | None = None
    for path, split in coco_files(root):
        part, classes = read_coco(path, images, log)
        if first is not None and classes.names != first[1].names:
            raise DataError(
                f"{path}: its categories {list(classes.names[1:])} are not those of {first[0]} "
                f"{list(first[1].names[1:])}; one import needs one set of classes"
            )
        first = first or (path, classes)
        for example in part:
            example.split = split
        examples += part
    return examples, first[1]


@register("coco", several=True)
def _read(source: Source) -> tuple[list[Example], Classes]:
    """`--format coco`: one file, or several files or a folder of them (each keeps its split)."""
    several = isinstance(source.path, list) or source.path.is_dir()
    return (read_coco_splits if several else read_coco)(source.path, source.images, source.log)
