"""Training settings: `TrainConfig`, checked when made, written to config.yaml and read back on resume."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..data.labels import Classes, Coding, default_class_names, read_classes_file
from ..data.names import MASK_MODES
from ..models.names import HEAD_NAMES
from ..models.sizes import check_image_size
from ..models.variants import get_variant
from ..utils import yamlfile
from ..utils.constants import VOID
from ..utils.safetext import clip, cut
from .names import LOSSES


class ResumeError(ValueError):
    """A run folder that cannot be resumed; the message names the file and says what to do."""


# settings newer than some run folders, with the value those runs had: a config.yaml may lack only these
ADDED_LATER = {
    "class_colors": None,
    "ignore_index": VOID,
    "reduce_labels": False,
    "class_weights": "none",
    "init_from": None,
    "tensorboard": False,
}
_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false", "None": "null"}


def _split(spec: str, sep: str) -> list[str]:
    """`spec` split at `sep` outside brackets: ``"list[int] | None"`` at ``|``."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(spec):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == sep and depth == 0:
            parts.append(spec[start:i].strip())
            start = i + 1
    return [*parts, spec[start:].strip()]


def matches(value: object, spec: str) -> bool:
    """Whether `value` (as YAML or a caller gives it) is of the annotation `spec` (``"tuple[int, int]"``,
    ``"list[str] | None"``), element by element; a list or tuple stands for either, a bool is no number."""
    alternatives = _split(spec, "|")
    if len(alternatives) > 1:
        return any(matches(value, a) for a in alternatives)
    if spec.endswith("]"):
        inner = _split(spec[spec.index("[") + 1 : -1], ",")
        if not isinstance(value, (list, tuple)):
            return False
        if spec.startswith("tuple") and len(inner) > 1:
            return len(value) == len(inner) and all(map(matches, value, inner))
        return all(matches(v, inner[0]) for v in value)
    if isinstance(value, bool):
        return spec == "bool"
    return {
        "None": value is None,
        "str": isinstance(value, str),
        "int": isinstance(value, int),
        "float": isinstance(value, (int, float)),
        "bool": False,
    }.get(spec, True)


def describe(spec: str) -> str:
    """The annotation `spec` in words, for messages (``"a list of 2 values, each an integer"``)."""
    alternatives = _split(spec, "|")
    if "None" in alternatives:
        return describe(" | ".join(a for a in alternatives if a != "None")) + " (or null)"
    if len(alternatives) > 1:
        return " or ".join(map(describe, alternatives))
    if spec.endswith("]"):
        inner = _split(spec[spec.index("[") + 1 : -1], ",")
        count = f"{len(inner)} values" if spec.startswith("tuple") and len(inner) > 1 else "values"
        return f"a list of {count}, each {describe(inner[0])}"
    return _KINDS.get(spec, spec)


def check_setting(name: str, value: object) -> str | None:
    """What is wrong with `value` for the setting `name` (its kind, element by element), or None."""
    spec = str(TrainConfig.__dataclass_fields__[name].type)
    return None if matches(value, spec) else f"{name} is {cut(value)}; it must be {describe(spec)}"


# settings with elements, checked one by one when made (the others come typed from the parser or a settings file)
CONTAINERS = ("class_names", "class_colors", "imgsz", "scheduler_epochs")
# settings a resumed run may change: they do not change what it computes
RESUMABLE = ("epochs", "device", "workers", "cache_memory_gb", "feature_cache_dir", "tensorboard")


def default_workers() -> int:
    """Data-loader processes for this machine: one per CPU core this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(8, cores)


@dataclass
class TrainConfig:
    """Every training setting; written to ``config.yaml`` in the run folder and read back on resume."""

    data: str
    out: str = "runs/train"
    arch: str = "webdino-300m"
    weights: str | None = None  # path, URL, Hub id, "random"; None: the variant's official .pth URL
    fine_tune: bool = False
    num_classes: int | None = None  # None: as many as --class-names or the data's classes.json name, else 2
    class_names: list[str] | None = None  # None: from the data's classes.json, else background/person for 2
    class_colors: list[list[int]] | None = None  # display colours; None: from classes.json, else a fixed palette
    ignore_index: int = 255  # the stored mask value meaning "not scored, not learned" (CamVid: 11)
    reduce_labels: bool = False  # ADE20K: 0 is ignore and class k is stored as k + 1
    class_weights: str = "none"  # none, median-freq, or w0,w1,... : the cross-entropy's per-class weights
    init_from: str | None = None  # a model checkpoint whose head (and fine-tuned backbone) the run starts from
    mask_mode: str = "auto"  # decided from the masks when the run starts; config.yaml holds the decision
    head: str = "simple"  # simple (the tutorial's), linear4, multilayer or guided
    loss: str = "ce"  # ce, or ce+dice
    imgsz: tuple[int, int] = (644, 644)
    lr: float = 1e-4
    batch: int = 8
    epochs: int = 60
    scheduler: bool = False
    scheduler_epochs: list[int] = field(default_factory=lambda: [45])
    device: str = "auto"
    workers: int | None = None  # None: one per CPU core (at most 8)
    seed: int = 42
    cache: bool = True
    cache_views: int = 4
    feature_cache_dir: str | None = None
    cache_memory_gb: float | None = None  # beyond this the cache is memory-mapped on disk (None: half the free)
    amp: bool = True
    skip_bad: bool = False
    valid_fraction: float | None = None  # for a flat images/ + masks/ folder: the seeded share used for validation
    tensorboard: bool = False  # also write TensorBoard event files into the run folder

    def __post_init__(self) -> None:
        problems = [p for p in (check_setting(name, getattr(self, name)) for name in CONTAINERS) if p]
        if problems:
            raise ValueError("; ".join(problems))
        self.imgsz = tuple(self.imgsz)
        get_variant(self.arch)  # an unknown name is an error that suggests the nearest
        check_image_size(*self.imgsz, get_variant(self.arch).patch_size)
        self._resolve_classes()
        for name, value in (("--epochs", self.epochs), ("--batch", self.batch), ("--cache-views", self.cache_views)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {self.workers}")
        if self.cache_memory_gb is not None and not self.cache_memory_gb > 0:
            raise ValueError(f"--cache-memory-gb must be positive, got {self.cache_memory_gb}")
        if self.scheduler and any(e < 1 for e in self.scheduler_epochs):
            raise ValueError(f"--scheduler-epochs must be epochs from 1 on, got {cut(self.scheduler_epochs)}")
        if self.valid_fraction is not None and not 0 < self.valid_fraction < 1:
            raise ValueError(f"--valid-fraction must be between 0 and 1 (e.g. 0.15), got {self.valid_fraction}")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"--mask-mode {cut(self.mask_mode)}: use one of {', '.join(MASK_MODES)}")
        if self.head not in HEAD_NAMES:
            raise ValueError(f"--head {cut(self.head)}: use one of {', '.join(HEAD_NAMES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss {cut(self.loss)}: use one of {', '.join(LOSSES)}")
        from .losses import parse_class_weights  # torch: imported when settings are made, not to build the CLI

        parse_class_weights(self.class_weights, self.num_classes)
        self.coding()  # the ignore value is checked
        if self.tensorboard:
            from .board import check_available

            check_available()

    def _resolve_classes(self) -> None:
        """Class count, names and colours from the flags, else the data's classes.json, else two classes."""
        found = read_classes_file(self.data) if Path(self.data).is_dir() else None
        if self.class_names is None and found is not None:
            self.class_names = found["names"]
            self.class_colors = self.class_colors or found["colors"]
            if self.ignore_index == VOID and not self.reduce_labels:
                self.ignore_index, self.reduce_labels = found["ignore_index"], found["reduce_labels"]
        if self.num_classes is None:
            self.num_classes = len(self.class_names) if self.class_names else 2
        if self.num_classes < 1:
            raise ValueError(f"--num-classes must be at least 1, got {self.num_classes}")
        if self.class_names is None:
            self.class_names = default_class_names(self.num_classes)
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"--class-names: {len(self.class_names)} names given for {self.num_classes} classes")
        classes = Classes(tuple(self.class_names), tuple(tuple(c) for c in self.class_colors or ()))
        self.class_colors = [list(c) for c in classes.colors]

    def coding(self) -> Coding:
        """How this run reads its masks' stored values."""
        return Coding(self.ignore_index, self.reduce_labels, self._mask_colors())

    def _mask_colors(self) -> tuple | None:
        """The class colours, when the data's classes.json gives them (then RGB-coded masks can be read)."""
        found = read_classes_file(self.data) if Path(self.data).is_dir() else None
        return tuple(tuple(c) for c in found["colors"]) if found and found["colors"] else None

    @property
    def views(self) -> int:
        """Augmented views to cache: never more than there are epochs to use them."""
        return min(self.cache_views, self.epochs)

    @property
    def loader_workers(self) -> int:
        """`workers`, or one per CPU core when unset."""
        return default_workers() if self.workers is None else self.workers

    def to_dict(self) -> dict:
        """The settings as plain data (lists, not tuples)."""
        return dataclasses.asdict(self) | {"imgsz": list(self.imgsz)}

    def to_yaml(self) -> str:
        """The settings as YAML."""
        return yamlfile.dump(self.to_dict())

    @classmethod
    def from_yaml(cls, path: Path) -> TrainConfig:
        """Read settings written by `to_yaml`: every setting must be there with a value of its kind (settings added
        in later versions take the value older runs had); a missing, unknown or mistyped one is named."""
        data = read_settings(path, ResumeError)
        missing = sorted({f.name for f in dataclasses.fields(cls)} - set(data) - set(ADDED_LATER))
        if missing:
            raise ResumeError(f"{path}: missing {', '.join(missing)}; the run's settings must be as train wrote them")
        return cls(**data)

    def resumed_with(self, changes: dict) -> TrainConfig:
        """These settings with the flags given to ``--resume`` applied; a change that would alter what the
        run computes is refused, naming the flag."""
        refused = []
        for key, value in changes.items():
            old = getattr(self, key)
            value = tuple(value) if key == "imgsz" else value
            if value == old:
                continue
            if key not in RESUMABLE:
                refused.append(f"--{key.replace('_', '-')} {value} (the run has {old})")
        if refused:
            raise ResumeError(
                f"--resume keeps a run's settings; these flags differ from its config.yaml: {', '.join(refused)}. "
                f"Only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may change on resume; start a new "
                "run (another --out) to change the others"
            )
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in RESUMABLE})


def read_settings(path: str | Path, error: type[ValueError] = ValueError) -> dict:
    """Training settings from a YAML file whose keys are `TrainConfig`'s (as in a run folder's config.yaml; any
    may be left out); an unknown key or a value of the wrong kind is an `error` naming the file and the key."""
    path = Path(path)
    data = load_yaml(path, error)
    return settings_from(data, path, error)


def load_yaml(path: Path, error: type[ValueError] = ValueError) -> object:
    """The YAML file `path` as data; unreadable or invalid YAML is an `error` naming the file."""
    try:
        return yamlfile.load(path.read_text())
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def settings_from(data: object, path: str | Path, error: type[ValueError] = ValueError) -> dict:
    """`data` (read from the file `path`) checked as training settings: the keys of `TrainConfig`, each value of
    its kind; an unknown key or a mistyped value is an `error` naming the file and the key."""
    if not isinstance(data, dict):
        raise error(f"{path}: not a settings file (expected key: value lines)")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(clip(str(k)) for k in unknown)
        raise error(
            f"{path}: unknown setting(s) {names}; the keys are those of a run folder's config.yaml: {', '.join(fields)}"
        )
    problems = [p for p in (check_setting(name, value) for name, value in data.items()) if p]
    if problems:
        raise error(f"{path}: {'; '.join(problems)}")
    return data
