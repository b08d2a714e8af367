"""The run folder: claiming a new one, resuming one, and the files it holds.

A run folder has config.yaml, run.json (the run's id and the settings it started with), metrics.csv, last.pth
(resume state), best_model_iou.pth, best_model_loss.pth, final_model.pth, the curves and valid_preds/. Every file
is written atomically. The run id is in every checkpoint and resume state the run writes, so `--resume` and
`evaluate` can tell the run's own files from a copy of another run's.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import uuid
from pathlib import Path

import torch
import yaml

from ..models.checkpoint import RUN_RECORD, save_model
from ..models.segmentation import SegmentationModel
from ..models.weights.errors import WeightsError
from ..models.weights.reader import safe_torch_load
from ..utils.files import atomic_write, atomic_write_text
from ..utils.safetext import command, cut
from .config import RESUMABLE, ResumeError, TrainConfig

LAST = "last.pth"
PREVIOUS = "last.prev.pth"
CONFIG = "config.yaml"
SPLIT = "split.json"  # a flat folder's split, decided when the run starts
DATA = "data.json"  # the run's images and masks per split, with sizes and hashes: --resume refuses other data
METRICS = "metrics.csv"  # one row per epoch
TIMINGS = "timings.json"  # where a finished run's time went, stage by stage
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


def fixed_settings(cfg: TrainConfig) -> dict:
    """The settings that decide what a run computes: all but those `--resume` may change."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE}


def differences(recorded: dict, now: dict) -> list[str]:
    """``key: now (recorded was)`` for every setting that differs, values cut short."""
    keys = sorted(set(recorded) | set(now))
    return [
        f"{k} {cut(now.get(k))} (the run started with {cut(recorded.get(k))})"
        for k in keys
        if recorded.get(k) != now.get(k)
    ]


class RunFolder:
    """One training run's folder and the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.record: dict | None = None  # run.json: the run id and the settings it started with

    @property
    def run_id(self) -> str | None:
        """The id every checkpoint and resume state of this run carries (None for a folder from before ids)."""
        return self.record["run_id"] if self.record else None

    def write_record(self, cfg: TrainConfig) -> None:
        """run.json: a new run id and the settings `cfg` fixes (also for an older folder adopted by --resume)."""
        record = {"format": "webdino-seg/run", "run_id": uuid.uuid4().hex, "settings": fixed_settings(cfg)}
        atomic_write_text(self / RUN_RECORD, json.dumps(record, indent=2) + "\n")
        self.record = record

    def _read_record(self) -> dict | None:
        path = self / RUN_RECORD
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ResumeError(f"{path}: not the run's record ({err})") from None
        if not (
            isinstance(record, dict)
            and isinstance(record.get("run_id"), str)
            and isinstance(record.get("settings"), dict)
        ):
            raise ResumeError(f'{path}: not the run\'s record (needs a "run_id" and its "settings")')
        return record

    def check_settings(self, cfg: TrainConfig) -> None:
        """Refuse a config.yaml whose settings differ from those the run started with, naming each."""
        if self.record is None:
            return
        changed = differences(self.record["settings"], fixed_settings(cfg))
        if changed:
            raise ResumeError(
                f"{self / CONFIG} differs from the settings the run started with ({self / RUN_RECORD}): "
                f"{'; '.join(changed)}. Its checkpoints were computed with those; put config.yaml back, or start "
                "a new run (another --out) with the new settings"
            )

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
        run.write_record(cfg)
        return run

    def update_config(self, before: TrainConfig, now: TrainConfig) -> None:
        """Rewrite config.yaml with the settings in force after a ``--resume`` that changed some (``--epochs``),
        keeping its comments and adding one that says what changed, when: it repeats the run as it now is."""
        changed = [f"{k} {v} (was {before.to_dict()[k]})" for k, v in now.to_dict().items() if before.to_dict()[k] != v]
        if not changed:
            return
        comments = [line for line in (self / CONFIG).read_text().splitlines(keepends=True) if line.startswith("#")]
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        comments.append(f"# resumed {stamp} with {'; '.join(changed)}\n")
        atomic_write_text(self / CONFIG, now.to_yaml() + "".join(comments))

    @classmethod
    def open(cls, path: str | Path) -> tuple[RunFolder, TrainConfig]:
        """An existing run to resume, and its settings (its stopped run's half-written temp files are removed by
        `remove_stale`, once, by one process).

        A run stopped before its first epoch ended (e.g. while caching features) has no last.pth and
        starts its first epoch again, reusing the features it kept.
        """
        run = cls(path)
        if not run.path.is_dir() or not (run / CONFIG).exists():
            raise FileNotFoundError(f"--resume {run.path}: no {CONFIG} there; is it a run folder?")
        if not (run / LAST).exists() and (run / PREVIOUS).exists():
            raise ResumeError(f"--resume {run.path}: {LAST} is missing. {run._recovery()}")
        try:
            cfg = TrainConfig.from_yaml(run / CONFIG)
        except ResumeError:
            raise
        except (yaml.YAMLError, TypeError, ValueError) as err:
            raise ResumeError(f"{run / CONFIG}: cannot be read as training settings ({err})") from None
        run.record = run._read_record()
        run.check_settings(cfg)
        return run, cfg

    def remove_stale(self) -> None:
        """Remove the half-written temp files a stopped run left."""
        for stale in self.path.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def split(self) -> dict | None:
        """The split the run recorded for a flat folder (image names per split), or None."""
        path = self / SPLIT
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ResumeError(f"{path}: not the run's split record ({err})") from None
        if not all(isinstance(record.get(k), list) for k in ("train", "valid")):
            raise ResumeError(f'{path}: needs the lists "train" and "valid" of image names')
        return record

    def has_state(self) -> bool:
        """Whether an epoch has finished (last.pth exists)."""
        return (self / LAST).exists()

    def save_last(self, state: dict) -> None:
        """Write the resume state (epoch, head, optimizer, scheduler, history, best); the one it replaces
        is kept as last.prev.pth."""
        settings = self.record["settings"] if self.record else None
        payload = {"format": "webdino-seg/last", "run_id": self.run_id, "settings": settings, **state}
        atomic_write(self / LAST, lambda f: torch.save(payload, f), keep_previous=self / PREVIOUS)

    def load_last(self) -> dict:
        """Read the resume state written by `save_last` and check it is this run's, whole and of its settings; a
        damaged or foreign file is a `ResumeError` that says what to do."""
        path = self / LAST
        try:
            state = self._read_state(path)
            self._check_owner(path, state)
        except WeightsError as err:
            raise ResumeError(f"{err}. {self._recovery()}") from None
        return state

    def _check_owner(self, path: Path, state: dict) -> None:
        """The state must carry this run's id and settings (a folder from before run ids: no id at all)."""
        theirs = state.get("run_id")
        if theirs != self.run_id:
            whose = f"run {theirs}" if theirs else "a run folder from before run ids"
            mine = f"run {self.run_id} ({self / RUN_RECORD})" if self.run_id else "a run folder without run.json"
            raise WeightsError(
                f"{path}: the resume state of {whose}, not of this folder's {mine}; it was copied from another run"
            )
        if self.record is not None:
            changed = differences(self.record["settings"], state.get("settings") or {})
            if changed:
                raise WeightsError(
                    f"{path}: written with other settings than {self / RUN_RECORD}: {'; '.join(changed[:4])}"
                )

    @staticmethod
    def _read_state(path: Path) -> dict:
        state = safe_torch_load(path, what="resume state")
        if not isinstance(state, dict) or state.get("format") != "webdino-seg/last":
            raise WeightsError(f"{path}: not a webdino-seg resume state")
        kinds = {"epoch": int, "head": dict, "optimizer": dict, "history": list, "best": dict}
        wrong = [k for k, kind in kinds.items() if not isinstance(state.get(k), kind) or isinstance(state.get(k), bool)]
        if wrong:
            raise WeightsError(f"{path}: a damaged resume state ({', '.join(wrong)} missing or of the wrong kind)")
        if state["epoch"] < 0 or not all(isinstance(row, dict) for row in state["history"]):
            raise WeightsError(f"{path}: a damaged resume state (epoch {state['epoch']}, history not rows)")
        return state

    def _recovery(self) -> str:
        """What the user can do when last.pth is missing or damaged."""
        options = []
        previous = self / PREVIOUS
        if previous.exists():
            try:
                state = self._read_state(previous)
                self._check_owner(previous, state)
                epoch = state["epoch"]
                again = command("webdino-seg", "train", "--resume", self.path)
                options.append(
                    f"The state after epoch {epoch} is intact in {previous}: continue from it with "
                    f"`{command('mv', previous, self / LAST)} && {again}`"
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
        atomic_write_text(self / METRICS, buf.getvalue())

    def save_model(self, name: str, model: SegmentationModel, identity: dict, meta: dict) -> Path:
        """A model checkpoint in the folder (see `checkpoint.save_model`)."""
        return save_model(self / name, model, identity, meta)
