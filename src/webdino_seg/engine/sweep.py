"""Sweep: several training candidates (heads, learning rates, losses...) on one feature cache, each trained into
its own run folder under the sweep folder exactly as `train` would, then ranked on a leaderboard.

The features are extracted once, with what every candidate's head reads (the last 4 layers when any head reads
them, the images when any does), and kept on disk in the sweep folder; each candidate reads its own part, which
equals the cache it would make alone bit for bit. A stopped sweep continues with the candidates not yet finished
(a candidate stopped mid-way resumes after its last epoch) and reads the kept cache instead of extracting again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..models.heads import HEADS, create_head
from ..models.variants import get_variant
from ..utils.files import atomic_write, atomic_write_text
from ..utils.runtime import resolve_device
from ..utils.safetext import command, cut
from . import leaderboard
from .artifacts import VALID_SCORES
from .config import TrainConfig, check_setting, load_yaml, settings_from
from .features import CacheShare, Contents
from .runfolder import CONFIG, TIMINGS, new_run_dir

SWEEPABLE = ("head", "lr", "loss", "class_weights", "batch")  # none of them changes the features
STATE = "sweep.json"  # the candidates, each with its settings and status
BASE = "base.yaml"  # the settings every candidate shares
FEATURES = "features"  # the shared feature cache, kept until the sweep folder is removed


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One combination of a sweep's settings, and the name of its run folder."""

    name: str
    changes: dict


def _label(key: str, value: object) -> str:
    """How a setting's value shows in a candidate's name (``linear4``, ``lr0.0003``, ``batch4``)."""
    text = {"head": "{}", "loss": "{}", "lr": "lr{:g}", "batch": "batch{}", "class_weights": "weights-{}"}[key]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text.format(value))


def candidates(grid: dict[str, list]) -> list[Candidate]:
    """Every combination of `grid`'s values (setting -> values, in order), named by the values that vary (the head
    alone when nothing does); an unknown setting, an empty or repeated list, or a mistyped value is an error."""
    unknown = sorted(set(grid) - set(SWEEPABLE))
    if unknown:
        raise ValueError(f"a sweep varies {', '.join(SWEEPABLE)}; not {', '.join(map(cut, unknown))}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep setting {key}: give a list of one or more values, got {cut(values)}")
        if len(set(map(str, values))) != len(values):
            raise ValueError(f"sweep setting {key}: {cut(values)} repeats a value")
        problems = [p for p in (check_setting(key, v) for v in values) if p]
        if problems:
            raise ValueError(f"sweep setting {key}: {problems[0]}")
    keys = [k for k in SWEEPABLE if k in grid]
    varying = [k for k in keys if len(grid[k]) > 1] or ["head"]
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        changes = dict(zip(keys, values, strict=True))
        name = "-".join(_label(k, changes.get(k, "simple")) for k in varying)
        out.append(Candidate(name, changes))
    return out


def read_sweep_file(path: str | Path) -> tuple[dict, dict]:
    """A sweep settings file: `train`'s settings (the keys of a run folder's config.yaml) and a ``sweep:`` mapping
    of setting -> list of values; returns (settings, grid), each checked, errors naming the file."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("sweep"), dict):
        raise ValueError(
            f"{path}: not a sweep file: it needs a 'sweep:' mapping, e.g. sweep: {{head: [simple, linear4]}}"
        )
    grid = data.pop("sweep")
    try:
        candidates(grid)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return settings_from(data, path), grid


def sweep(base: TrainConfig, grid: dict[str, list], *, log: Callable[[str], None] = print) -> Path:
    """Train every candidate of `grid` (see `candidates`) on the features of `base`'s data, extracted once, each
    into its own run folder in a new sweep folder at ``base.out``; write the leaderboard there and copy the best
    candidate's model beside it. Returns the sweep folder. Every setting is checked before the folder is made."""
    cands = candidates(grid)
    if base.fine_tune or not base.cache:
        raise ValueError(
            "a sweep trains heads on one feature cache: --fine-tune and --no-cache do not apply (run train for each)"
        )
    for cand in cands:
        dataclasses.replace(base, **cand.changes)  # each candidate's settings are checked now
    folder = new_run_dir(base.out)
    atomic_write_text(folder / BASE, base.to_yaml())
    state = {"grid": grid, "candidates": [{"name": c.name, "settings": c.changes, "status": "pending"} for c in cands]}
    _save_state(folder, state)
    log(f"sweep folder: {folder}  candidates: {', '.join(c.name for c in cands)}")
    return _run(folder, base, state, log)


def resume_sweep(path: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Continue a stopped sweep: its finished candidates are kept, the others trained (a stopped one resumed),
    its kept features read, not extracted again; then the leaderboard. Returns the sweep folder."""
    folder = Path(path)
    if not (folder / STATE).is_file() or not (folder / BASE).is_file():
        raise ValueError(f"{folder}: not a sweep folder (no {STATE} and {BASE}); sweep --resume takes one")
    base = TrainConfig.from_yaml(folder / BASE)
    try:
        state = json.loads((folder / STATE).read_text())
        names = [c["name"] for c in state["candidates"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{folder / STATE}: damaged ({type(err).__name__}); start the sweep again") from None
    if names != [c.name for c in candidates(state["grid"])]:
        raise ValueError(f"{folder / STATE}: its candidates do not match its grid; start the sweep again")
    left = [c["name"] for c in state["candidates"] if c["status"] not in ("done", "failed")]
    log(f"resuming sweep {folder}: {len(names) - len(left)} of {len(names)} candidates finished")
    return _run(folder, base, state, log)


def _save_state(folder: Path, state: dict) -> None:
    atomic_write_text(folder / STATE, json.dumps(state, indent=1) + "\n")


def _run(folder: Path, base: TrainConfig, state: dict, log: Callable[[str], None]) -> Path:
    """Train the sweep's unfinished candidates one after another on one shared cache, then rank them."""
    from .train import resume, train  # the training loop, imported when a sweep runs

    contents = Contents()
    for entry in state["candidates"]:
        head = HEADS[entry["settings"].get("head", base.head)]
        contents = contents | Contents(head.layers, head.needs_image)
    share = CacheShare(contents)
    cache_dir = base.feature_cache_dir or str(folder / FEATURES)
    count = len(state["candidates"])
    for i, entry in enumerate(state["candidates"], 1):
        if entry["status"] in ("done", "failed"):
            continue
        run = folder / entry["name"]
        cfg = dataclasses.replace(base, **entry["settings"], out=str(run), feature_cache_dir=cache_dir)
        say = _prefixed(log, f"[{i}/{count} {entry['name']}] ")
        entry["status"] = "running"
        _save_state(folder, state)
        try:
            if (run / CONFIG).is_file():  # stopped mid-way: it continues after its last completed epoch
                resume(run, log=say, share=share)
            else:
                if run.exists():  # claimed, but stopped before its settings were written: nothing in it to keep
                    shutil.rmtree(run)
                train(cfg, log=say, share=share)
            entry["status"] = "done"
        except KeyboardInterrupt:
            log(
                f"sweep stopped during {entry['name']}; continue it with: "
                + command("webdino-seg", "sweep", "--resume", folder)
            )
            raise
        except RuntimeError as err:  # out of memory, a NaN loss: this candidate failed, the sweep goes on
            entry |= {"status": "failed", "message": f"{type(err).__name__}: {err}"}
            log(f"[{i}/{count} {entry['name']}] failed: {entry['message']}; going on with the next candidate")
        finally:
            _save_state(folder, state)
    return _finish(folder, base, state, log)


def _prefixed(log: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda line: log(prefix + line)


def _finish(folder: Path, base: TrainConfig, state: dict, log: Callable[[str], None]) -> Path:
    """The leaderboard (printed and written) and the best candidate's model copied into the sweep folder."""
    device = resolve_device(base.device)
    entries = []
    for entry in state["candidates"]:
        row = dict(entry)
        if entry["status"] == "done":
            run = folder / entry["name"]
            cfg = dataclasses.replace(base, **entry["settings"])
            timings = json.loads((run / TIMINGS).read_text())
            row |= {
                "scores": json.loads((run / VALID_SCORES).read_text()),
                "train_s": timings["wall_s"] - timings["stages"].get("cache", {}).get("seconds", 0.0),
            }
            row["params"], row["head_ms"] = head_cost(cfg, device)
        entries.append(row)
    board = leaderboard.rank(entries, base.class_names)
    commands = []
    best = next((row for row in board["rows"] if row["status"] == "done"), None)
    if best is not None:
        model = folder / "best_model_iou.pth"
        source = folder / best["name"] / "best_model_iou.pth"
        atomic_write(model, lambda f: f.write(source.read_bytes()))
        ws = "webdino-seg"
        commands = [
            command(ws, "predict", "--input", "IMAGES", "--model", model, "--out", folder / "predict"),
            command(ws, "evaluate", "--data", base.data, "--model", model, "--report", folder / "report"),
            command(ws, "video", "--input", "VIDEO.mp4", "--model", model, "--out", folder / "video.mp4"),
        ]
    leaderboard.write(folder, board, commands=commands)
    for line in leaderboard.table_lines(board):
        log(line)
    log(f"leaderboard: {folder / 'leaderboard.html'} (also .csv, .json, .png)")
    if best is not None:
        log(f"best: {best['name']}, copied to {folder / 'best_model_iou.pth'}; next: {commands[0]}")
    return folder


@torch.inference_mode()
def head_cost(cfg: TrainConfig, device: torch.device) -> tuple[int, float]:
    """The parameters of `cfg`'s head and its forward time in milliseconds per image on `device` (a batch of
    ``cfg.batch`` inputs of the training size; the median of repeated runs after a warm-up)."""
    variant = get_variant(cfg.arch)
    head = create_head(cfg.head, variant.embed_dim, cfg.num_classes).to(device).eval()
    params = sum(p.numel() for p in head.parameters())
    (h, w), p = cfg.imgsz, variant.patch_size
    grid = torch.randn(cfg.batch, head.layers * variant.embed_dim, h // p, w // p, device=device)
    inputs = (grid, torch.randn(cfg.batch, 3, h, w, device=device)) if head.needs_image else (grid,)
    times = []
    for i in range(8):
        start = time.perf_counter()
        head(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:  # the first runs warm up
            times.append(time.perf_counter() - start)
    return params, 1000 * sorted(times)[len(times) // 2] / cfg.batch
