"""The run folder: training settings (`TrainConfig`), creating and resuming a run, and what it holds.

A run folder has config.yaml, metrics.csv, last.pth (resume state), best_model_iou.pth,
best_model_loss.pth, final_model.pth, the curves and valid_preds/. Every file is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from .backbone import check_image_size
from .checkpoint import load_model, save_model
from .imageio import MASK_MODES, read_image, read_mask
from .io import atomic_write, atomic_write_text, save_png
from .metrics import ConfusionMatrix
from .model import SegmentationModel
from .overlay import caption, overlay
from .predictor import Predictor
from .weights import WeightsError, safe_torch_load

LAST = "last.pth"
PREVIOUS = "last.prev.pth"
CONFIG = "config.yaml"


class ResumeError(ValueError):
    """A run folder that cannot be resumed; the message names the file and says what to do."""


# settings a resumed run may change: they do not change what it computes
RESUMABLE = ("epochs", "device", "workers", "cache_memory_gb", "feature_cache_dir")


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
    num_classes: int = 2
    class_names: list[str] | None = None
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

    def __post_init__(self) -> None:
        from .heads import HEADS
        from .losses import LOSSES
        from .variants import get_variant

        self.imgsz = tuple(self.imgsz)
        get_variant(self.arch)  # an unknown name is an error that suggests the nearest
        check_image_size(*self.imgsz, get_variant(self.arch).patch_size)
        if self.class_names is None:
            self.class_names = (
                ["background", "person"] if self.num_classes == 2 else [f"class{i}" for i in range(self.num_classes)]
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"--class-names: {len(self.class_names)} names given for {self.num_classes} classes")
        for name, value in (("--epochs", self.epochs), ("--batch", self.batch), ("--cache-views", self.cache_views),
                            ("--num-classes", self.num_classes)):  # fmt: skip
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {self.workers}")
        if self.cache_memory_gb is not None and not self.cache_memory_gb > 0:
            raise ValueError(f"--cache-memory-gb must be positive, got {self.cache_memory_gb}")
        if self.scheduler and any(e < 1 for e in self.scheduler_epochs):
            raise ValueError(f"--scheduler-epochs must be epochs from 1 on, got {self.scheduler_epochs}")
        if self.valid_fraction is not None and not 0 < self.valid_fraction < 1:
            raise ValueError(f"--valid-fraction must be between 0 and 1 (e.g. 0.15), got {self.valid_fraction}")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"--mask-mode {self.mask_mode!r}: use one of {', '.join(MASK_MODES)}")
        if self.head not in HEADS:
            raise ValueError(f"--head {self.head!r}: use one of {', '.join(HEADS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss {self.loss!r}: use one of {', '.join(LOSSES)}")

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
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: Path) -> TrainConfig:
        """Read settings written by `to_yaml`."""
        return cls(**yaml.safe_load(path.read_text()))

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


CLAIM = ".webdino-seg-run"  # created exclusively: whoever creates it owns the folder


def new_run_dir(out: str | Path) -> Path:
    """Create and return `out` if new or empty, else the first free ``out-2``, ``out-3``...

    A folder is claimed by creating a marker file in it exclusively, so two runs started at the
    same instant never share one.
    """
    base = Path(out)
    candidate, n = base, 1
    while True:
        candidate.mkdir(parents=True, exist_ok=True)
        if not any(candidate.iterdir()):
            try:
                os.close(os.open(candidate / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                return candidate
            except FileExistsError:
                pass  # another run claimed it a moment ago
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")


class RunFolder:
    """One training run's folder and the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def features(self) -> Path:
        """Where extracted features are kept in chunks until the run ends (so --resume need not redo them)."""
        return self / "features"

    @classmethod
    def create(cls, cfg: TrainConfig, notes: list[str] = ()) -> RunFolder:
        """A new folder for `cfg` (``--out`` or the next free ``-N``) with its config.yaml (`notes` as comments)."""
        run = cls(new_run_dir(cfg.out))
        comments = "".join(f"# {line}\n" for note in notes for line in note.splitlines())
        atomic_write_text(run / CONFIG, cfg.to_yaml() + comments)
        return run

    @classmethod
    def open(cls, path: str | Path) -> tuple[RunFolder, TrainConfig]:
        """An existing run to resume, and its settings; half-written temp files of the stopped run are removed.

        A run stopped before its first epoch ended (e.g. while caching features) has no last.pth and
        starts its first epoch again, reusing the features it kept.
        """
        run = cls(path)
        if not run.path.is_dir() or not (run / CONFIG).exists():
            raise FileNotFoundError(f"--resume {run.path}: no {CONFIG} there; is it a run folder?")
        if not (run / LAST).exists() and (run / PREVIOUS).exists():
            raise ResumeError(f"--resume {run.path}: {LAST} is missing. {run._recovery()}")
        for stale in run.path.rglob(".*.tmp"):
            stale.unlink()
        try:
            cfg = TrainConfig.from_yaml(run / CONFIG)
        except (yaml.YAMLError, TypeError, ValueError) as err:
            raise ResumeError(f"{run / CONFIG}: cannot be read as training settings ({err})") from None
        return run, cfg

    def has_state(self) -> bool:
        """Whether an epoch has finished (last.pth exists)."""
        return (self / LAST).exists()

    def save_last(self, state: dict) -> None:
        """Write the resume state (epoch, head, optimizer, scheduler, history, best); the one it replaces
        is kept as last.prev.pth."""
        payload = {"format": "webdino-seg/last", **state}
        atomic_write(self / LAST, lambda f: torch.save(payload, f), keep_previous=self / PREVIOUS)

    def load_last(self) -> dict:
        """Read the resume state written by `save_last`; a damaged file is a `ResumeError` that says what to do."""
        path = self / LAST
        try:
            state = self._read_state(path)
        except WeightsError as err:
            raise ResumeError(f"{err}. {self._recovery()}") from None
        return state

    @staticmethod
    def _read_state(path: Path) -> dict:
        state = safe_torch_load(path, what="resume state")
        if not isinstance(state, dict) or state.get("format") != "webdino-seg/last":
            raise WeightsError(f"{path}: not a webdino-seg resume state")
        return state

    def _recovery(self) -> str:
        """What the user can do when last.pth is missing or damaged."""
        options = []
        previous = self / PREVIOUS
        if previous.exists():
            try:
                epoch = self._read_state(previous)["epoch"]
                options.append(
                    f"The state after epoch {epoch} is intact in {previous}: continue from it with "
                    f"`mv {previous} {self / LAST} && webdino-seg train --resume {self.path}`"
                )
            except WeightsError:
                pass
        if (self / "best_model_loss.pth").exists():
            options.append(f"use {self / 'best_model_loss.pth'} as a model (--model)")
        options.append(f"or start over with the settings in {self / CONFIG} into a new --out folder")
        return "; ".join(options)

    def write_metrics(self, history: list[dict]) -> None:
        """metrics.csv: one row per epoch."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self / "metrics.csv", buf.getvalue())

    def save_model(self, name: str, model: SegmentationModel, identity: dict, meta: dict) -> Path:
        """A model checkpoint in the folder (see `checkpoint.save_model`)."""
        return save_model(self / name, model, identity, meta)

    def finish(
        self,
        model: SegmentationModel,
        identity: dict,
        meta: dict,
        history: list[dict],
        valid_pairs: list[tuple[Path, Path]],
        cfg: TrainConfig,
        device: torch.device,
    ) -> None:
        """Final artifacts: final_model.pth, the curves and valid_preds/; the kept feature chunks are removed."""
        self.save_model("final_model.pth", model, identity, meta)
        from .plots import save_curves

        save_curves(history, self.path, title=self.path.name, baseline=meta.get("baseline"))
        self.write_valid_preds(model, valid_pairs, cfg, device)
        shutil.rmtree(self.features, ignore_errors=True)

    def write_valid_preds(
        self, model: SegmentationModel, pairs: list[tuple[Path, Path]], cfg: TrainConfig, device: torch.device
    ) -> None:
        """``valid_preds/<name>.png``: ground truth beside the best-mIoU model's prediction, at full resolution,
        each side captioned (image name, "ground truth"; "prediction" and the image's mIoU)."""
        best_path = self / "best_model_iou.pth"
        if not best_path.exists():
            return
        best, ckpt = load_model(best_path, backbone=model.backbone)
        predictor = Predictor(best, cfg.imgsz, ckpt["mean"], ckpt["std"], ckpt["class_names"], device, cfg.amp)
        out = self / "valid_preds"
        out.mkdir(exist_ok=True)
        for image_path, mask_path in tqdm(pairs, desc="valid_preds", leave=False):
            image = read_image(image_path)
            truth = read_mask(mask_path, cfg.mask_mode)
            pred = predictor.predict(image)
            one = ConfusionMatrix(cfg.num_classes)
            one.update(torch.from_numpy(pred), torch.from_numpy(truth))
            left = caption(overlay(image, truth), f"{image_path.name}: ground truth")
            right = caption(overlay(image, pred), f"prediction: mIoU {one.miou():.3f}")
            gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
            save_png(out / f"{image_path.stem}.png", np.concatenate([left, gap, right], 1))
