"""How a dataset stores its labels, and the classes file that says so.

Inside the package a mask is (H, W) uint8 class ids with 255 (`VOID`) for "not scored, not learned".
Datasets store labels otherwise: CamVid marks ignore with 11, ADE20K with 0 (class k stored as k+1:
`reduce_labels`), many tools colour-code classes in RGB. A `Coding` turns stored values into class
ids; `Classes` holds the names and display colours. ``classes.json`` in a dataset folder (written by
``prepare-data``, or by hand) holds both, and ``train``, ``evaluate`` and ``show-data`` read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils.constants import VOID
from ..utils.files import atomic_write_text
from ..utils.overlay import palette
from ..utils.safetext import cut

CLASSES_FILE = "classes.json"
MAX_CLASSES = VOID  # 8-bit label maps with 255 as void hold the ids 0-254
BACKGROUND_NAMES = ("background", "bg", "void", "unlabelled", "unlabeled", "class0")  # class 0 names left undrawn


class LabelError(ValueError):
    """Label settings or a classes file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Coding:
    """How stored mask values become class ids: which value means ignore, ADE20K's shift, RGB colours."""

    ignore_index: int = VOID
    reduce_labels: bool = False
    colors: tuple[tuple[int, int, int], ...] | None = None  # class i's colour in RGB-coded masks

    def __post_init__(self) -> None:
        if not 0 <= self.ignore_index <= 65535:
            raise LabelError(f"--ignore-index must be a mask value from 0 to 65535, got {self.ignore_index}")

    def decode(self, values: np.ndarray, where: str) -> np.ndarray:
        """Stored values (H, W) of any integer type, or (H, W, 3) colours, to uint8 class ids with 255 void."""
        if values.ndim == 3:
            return self._from_colors(values, where)
        values = values.astype(np.int64)
        if values.size and values.min() < 0:
            raise ValueError(f"{where}: mask has negative value(s), e.g. {int(values.min())}; class ids start at 0")
        ignore = values == self.ignore_index
        if self.reduce_labels:  # ADE20K: 0 is "other" (ignored), class k is stored as k + 1
            ignore |= values == 0
            values = values - 1
        if self.ignore_index != VOID and (values == VOID).any() and not self.reduce_labels:
            raise ValueError(f"{where}: mask holds 255 but the ignore value is {self.ignore_index}; is 255 a class?")
        too_big = values[~ignore] >= VOID
        if too_big.any():
            top = int(values[~ignore].max())
            binary = "; 0/65535 masks are two-class masks: pass --mask-mode binary" if top == 65535 else ""
            raise ValueError(
                f"{where}: mask value {top} does not fit a class id (0-{VOID - 1}, {VOID} void); "
                f"if it means 'ignore', pass --ignore-index {top}{binary}"
            )
        return np.where(ignore, VOID, values).astype(np.uint8)

    def _from_colors(self, rgb: np.ndarray, where: str) -> np.ndarray:
        if not self.colors:
            raise ValueError(
                f"{where}: mask is colour-coded (RGB); give each class's colour in {CLASSES_FILE} beside the "
                'images/ or *_images/ folders ("colors": [[r, g, b], ...]) so colours can be read as classes'
            )
        codes = rgb[..., 0].astype(np.int64) << 16 | rgb[..., 1].astype(np.int64) << 8 | rgb[..., 2]
        table = {r << 16 | g << 8 | b: i for i, (r, g, b) in enumerate(self.colors)}
        out = np.full(codes.shape, VOID, np.uint8)
        unknown = np.ones(codes.shape, bool)
        for code, index in table.items():
            hit = codes == code
            out[hit], unknown[hit] = index, False
        if unknown.any():
            odd = int(codes[unknown][0])
            raise ValueError(
                f"{where}: {int(unknown.sum())} pixel(s) have a colour that is no class's, e.g. "
                f"RGB {(odd >> 16, odd >> 8 & 255, odd & 255)}"
            )
        return out

    def to_dict(self) -> dict:
        """As stored in config.yaml and model checkpoints."""
        return {
            "ignore_index": self.ignore_index,
            "reduce_labels": self.reduce_labels,
            "colors": [list(c) for c in self.colors] if self.colors else None,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> Coding:
        """The coding `to_dict` wrote (the default for checkpoints older than it)."""
        data = data or {}
        colors = data.get("colors")
        return cls(
            int(data.get("ignore_index", VOID)),
            bool(data.get("reduce_labels", False)),
            tuple(tuple(int(v) for v in c) for c in colors) if colors else None,
        )


@dataclass(frozen=True)
class Classes:
    """Class names and their display colours (a fixed palette unless the dataset gives its own)."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...] = field(default=())

    def __post_init__(self) -> None:
        check_class_names(list(self.names))
        if not self.colors:  # a class called background is never drawn; otherwise class 0 is a class like any
            background = self.names[0].lower().strip("_") in BACKGROUND_NAMES
            colors = palette(len(self.names), background).tolist()
            object.__setattr__(self, "colors", tuple(tuple(c) for c in colors))
        if len(self.colors) != len(self.names):
            raise LabelError(f"{len(self.colors)} colours given for {len(self.names)} classes")
        bad = [c for c in self.colors if len(c) != 3 or not all(_byte(v) for v in c)]
        if bad:
            raise LabelError(f"class colour {cut(list(bad[0]))}: a colour is three integers 0-255 (R, G, B)")


def _byte(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value <= 255


def default_class_names(count: int) -> list[str]:
    """The names of classes nobody named: background and person for two (the Penn-Fudan recipe), else class0,
    class1, ... (class0 read as background: it is not drawn)."""
    return ["background", "person"] if count == 2 else [f"class{i}" for i in range(count)]


def check_class_names(names: list[str]) -> None:
    """Refuse more classes than 8-bit masks can label, and names given twice."""
    if len(names) > MAX_CLASSES:
        raise LabelError(
            f"{len(names)} classes: 8-bit label maps with {VOID} as void hold at most {MAX_CLASSES} "
            f"(ids 0-{MAX_CLASSES - 1})"
        )
    seen: set[str] = set()
    twice = [n for n in names if n in seen or seen.add(n)]
    if twice:
        raise LabelError(f"class name(s) given twice: {', '.join(dict.fromkeys(twice))}; each class needs its own name")


def read_classes_file(root: str | Path) -> dict | None:
    """The classes file of a dataset folder as a dict (names, colors, ignore_index, reduce_labels), or None."""
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LabelError(f"{path}: not a JSON file ({err})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise LabelError(f'{path}: needs "names": a list of class names, background first')
    colors = data.get("colors")
    if colors is not None and (len(colors) != len(names) or any(len(c) != 3 for c in colors)):
        raise LabelError(f'{path}: "colors" needs one [r, g, b] per class name ({len(names)})')
    return {
        "names": names,
        "colors": colors,
        "ignore_index": int(data.get("ignore_index", VOID)),
        "reduce_labels": bool(data.get("reduce_labels", False)),
    }


def write_classes_file(root: str | Path, classes: Classes, ignore_index: int = VOID, source: str = "") -> Path:
    """Write ``classes.json``: names, colours and the ignore value of a prepared dataset."""
    note = f"masks are PNGs of class ids (0-{len(classes.names) - 1}), {ignore_index} = ignore" + source
    text = (
        "{\n"
        f'  "names": {json.dumps(list(classes.names))},\n'
        f'  "colors": [{", ".join(json.dumps(list(c)) for c in classes.colors)}],\n'
        f'  "ignore_index": {ignore_index},\n'
        '  "reduce_labels": false,\n'
        f'  "note": {json.dumps(note)}\n'
        "}\n"
    )
    return atomic_write_text(Path(root) / CLASSES_FILE, text)
