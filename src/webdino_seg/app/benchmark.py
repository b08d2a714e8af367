"""The tutorial's recipe against ours, measured as users feel it, in one process on one device.

Training is measured end to end: our real `train` runs every epoch and writes every artifact,
wall-clock from start to the last file. The tutorial's recipe (fp32, plain math attention, the
frozen backbone recomputed on every batch, the same data loader) runs the same `train` for a few
real epochs and is extrapolated to the full schedule from its own measured epochs (labelled as
such). The backbone is timed at several batch sizes and video end to end. Every figure is repeated
(median with min-max); the table and JSON record the device, versions, precision flags and which
attention kernel ran.
"""

from __future__ import annotations

import contextlib
import csv
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..engine.runfolder import TIMINGS
from ..engine.timings import timing_lines
from ..engine.train import TrainConfig, train
from ..inference.predictor import Predictor
from ..inference.video import first_frame, run_video
from ..models.builder import create_model
from ..utils.runtime import autocast, describe, prepare_model, resolve_device, speed_flags

SDPA_KERNELS = {  # profiler op name -> kernel
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "mem-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_attention_math": "math",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WARMUP = 2  # untimed calls before the timed ones: first calls build kernels, thread pools, caches


def summarise(values: list[float]) -> dict:
    """Median, min, max and every repetition; `reliable` is False where the spread (max - min) is wider than the
    median, so no ratio should be read off it."""
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "runs": values,
        "reliable": max(values) - min(values) <= median,
    }


def repeat(fn: Callable[[], float], repeats: int, warmup: int = WARMUP) -> dict:
    """Call `fn` (which returns one measurement) `warmup` times untimed, then `repeats` times; summarise those."""
    for _ in range(warmup):
        fn()
    return summarise([fn() for _ in range(repeats)])


def tutorial_mode() -> contextlib.AbstractContextManager:
    """The tutorial's attention: the plain (math) kernel only."""
    return sdpa_kernel(SDPBackend.MATH)


def sdpa_kernel_used(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> str:
    """Which attention kernel a forward pass runs, read off the profiler."""
    from torch.profiler import profile

    with torch.inference_mode(), autocast(x.device, amp), profile() as prof:
        model.features(x)
    names = {event.name for event in prof.events()}
    found = [kernel for op, kernel in SDPA_KERNELS.items() if op in names]
    return ", ".join(found) or "none seen"


def tutorial_config(data: str | Path, out: Path, **common: object) -> TrainConfig:
    """The tutorial's recipe as our settings: fp32, no feature cache (backbone on every batch)."""
    return TrainConfig(data=str(data), out=str(out), cache=False, amp=False, **common)


def our_config(data: str | Path, out: Path, **common: object) -> TrainConfig:
    """Our recipe: bf16 on GPU, features cached once per view."""
    return TrainConfig(data=str(data), out=str(out), cache=True, amp=True, **common)


def _epoch_seconds(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def _timed_train(cfg: TrainConfig, device: torch.device, mode: contextlib.AbstractContextManager) -> tuple[float, Path]:
    _sync(device)
    start = time.perf_counter()
    with mode:
        run = train(cfg, log=lambda *_: None)
    _sync(device)
    return time.perf_counter() - start, run


def bench_training(
    data: str | Path,
    arch: str,
    imgsz: tuple[int, int],
    device: torch.device,
    *,
    epochs: int,
    tutorial_epochs: int,
    views: int,
    repeats: int,
    batch: int = 8,
) -> dict:
    """Wall-clock of whole training runs: ours for `epochs`, the tutorial's for `tutorial_epochs`, extrapolated.

    The tutorial's full-schedule figure is its measured run plus (epochs - measured) times the mean
    of its own measured epoch times. An untimed one-epoch run of each recipe comes first.
    """
    common = {
        "arch": arch,
        "weights": "random",
        "imgsz": imgsz,
        "batch": batch,
        "lr": 1e-4,
        "device": str(device),
        "seed": 0,
        "cache_views": views,
    }
    ours, tutorial, tutorial_full = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up, untimed: one epoch of each recipe (first-call costs of kernels, loaders and imports)
        _timed_train(our_config(data, Path(tmp) / "warm-ours", epochs=1, **common), device, contextlib.nullcontext())
        _timed_train(tutorial_config(data, Path(tmp) / "warm-tut", epochs=1, **common), device, tutorial_mode())
        for i in range(repeats):
            seconds, run = _timed_train(
                our_config(data, Path(tmp) / f"ours{i}", epochs=epochs, **common), device, contextlib.nullcontext()
            )
            ours.append(seconds)
            timings = json.loads((run / TIMINGS).read_text())
            cfg = tutorial_config(data, Path(tmp) / f"tut{i}", epochs=tutorial_epochs, **common)
            seconds, run = _timed_train(cfg, device, tutorial_mode())
            per_epoch = statistics.mean(_epoch_seconds(run))
            tutorial.append(seconds)
            tutorial_full.append(seconds + (epochs - tutorial_epochs) * per_epoch)
    return {
        "ours_train_s": summarise(ours),
        "tutorial_train_measured_s": summarise(tutorial),
        "tutorial_train_extrapolated_s": summarise(tutorial_full),
        "epochs": epochs,
        "tutorial_epochs_measured": tutorial_epochs,
        "ours_train_timings": timings,  # where the last of our runs spent its time (its timings.json)
    }


def bench_backbone(
    model,
    imgsz: tuple[int, int],
    device: torch.device,
    *,
    batches: tuple[int, ...],
    iters: int,
    repeats: int,
    recipe: str,
) -> dict:
    """Backbone images/s per batch size for one recipe: ``tutorial`` (fp32, math attention) or ``ours``."""
    out: dict = {}
    h, w = imgsz
    mode, amp = (tutorial_mode, False) if recipe == "tutorial" else (contextlib.nullcontext, True)
    for b in batches:
        x = torch.randn(b, 3, h, w, device=device)

        def once(x=x) -> float:
            with torch.inference_mode(), mode(), autocast(device, amp):
                _sync(device)
                start = time.perf_counter()
                for _ in range(iters):
                    model.features(x)
                _sync(device)
            return iters * len(x) / (time.perf_counter() - start)

        out[f"{recipe}_backbone_img_s_b{b}"] = repeat(once, repeats)
    return out


def bench_whole(model, size: int, device: torch.device, *, iters: int, repeats: int, recipe: str) -> dict:
    """Whole-model (backbone and head) frames/s at batch 1 and `size` x `size` rounded up to the patch size."""
    p = model.backbone.patch_size
    side = -(-size // p) * p
    x = torch.randn(1, 3, side, side, device=device)
    mode, amp = (tutorial_mode, False) if recipe == "tutorial" else (contextlib.nullcontext, True)

    def once() -> float:
        with torch.inference_mode(), mode(), autocast(device, amp):
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                model(x)
            _sync(device)
        return iters / (time.perf_counter() - start)

    return {f"{recipe}_whole_fps_b1": repeat(once, repeats), "whole_side": side}


def bench_video(
    model, imgsz: tuple[int, int], device: torch.device, *, video: str | Path, frames: int, repeats: int, recipe: str
) -> dict:
    """End-to-end video FPS for one recipe: ``tutorial`` (frame by frame, fp32) or ``ours`` (batched, bf16 on GPU)."""
    cfg = model.backbone.cfg
    tutorial = recipe == "tutorial"
    predictor = Predictor(model, imgsz, cfg.mean, cfg.std, ["background", "person"], device=device, amp=not tutorial)
    mode, batch = (tutorial_mode, 1) if tutorial else (contextlib.nullcontext, 8)
    with tempfile.TemporaryDirectory() as tmp:

        def once() -> float:
            with mode():
                info = run_video(predictor, video, Path(tmp) / "v.mp4", batch=batch, max_frames=frames, progress=False)
            return info["fps"]

        first = first_frame(video)
        share = float((predictor.predict(first) != 0).mean())  # what the drawing costs depends on it
        return {
            f"{recipe}_video_fps": repeat(once, repeats, warmup=1),
            "video_frames": frames,
            "video_foreground": share,
        }


def benchmark(
    arch: str = "webdino-300m",
    imgsz: tuple[int, int] = (644, 644),
    device: str = "auto",
    *,
    quick: bool = False,
    video: str | Path | None = None,
    views: int = 4,
    log: Callable[[str], None] = print,
    data: str | Path | None = None,
    repeats: int = 3,
    epochs: int = 60,
    tutorial_epochs: int = 2,
) -> dict:
    """Measure both recipes; return a dict of figures (each a median/min/max summary) and the runtime."""
    dev = resolve_device(device)
    iters = 1 if quick else 10
    batches = (1, 2) if quick and dev.type == "cpu" else (1, 8, 32)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=2, seed=0).to(dev).eval()
    h, w = imgsz
    res: dict = {
        "arch": arch,
        "imgsz": [h, w],
        "quick": quick,
        "repeats": repeats,
        "batches": list(batches),
        "views": views,
        "sdpa": {},
    }
    with speed_flags(dev):
        res["runtime"] = describe(dev)  # the flags as every figure ran
        if data is not None:
            log(f"training end to end: ours {epochs} epochs, the tutorial's {tutorial_epochs} epochs, x{repeats} ...")
            res |= _as_measured(
                bench_training(
                    data, arch, imgsz, dev, epochs=epochs, tutorial_epochs=tutorial_epochs, views=views, repeats=repeats
                ),
                log,
            )
        x = torch.randn(1, 3, h, w, device=dev)
        for recipe in ("tutorial", "ours"):
            if recipe == "ours":  # our recipe keeps the frozen backbone in bf16 on a GPU: cast once, in place
                prepare_model(model, dev, amp=True)
            with tutorial_mode() if recipe == "tutorial" else contextlib.nullcontext():
                res["sdpa"][recipe] = sdpa_kernel_used(model, x, recipe == "ours")
            log(f"backbone throughput, {recipe} ...")
            res |= _as_measured(
                bench_backbone(model, imgsz, dev, batches=batches, iters=iters, repeats=repeats, recipe=recipe), log
            )
            res |= _as_measured(
                bench_whole(model, 512 if not quick else 56, dev, iters=iters, repeats=repeats, recipe=recipe), log
            )
            if video is not None:
                frames = 4 if quick and dev.type == "cpu" else (24 if quick else 240)
                log(f"video, {recipe}: {frames} frames, x{repeats} ...")
                res |= _as_measured(
                    bench_video(model, imgsz, dev, video=video, frames=frames, repeats=repeats, recipe=recipe), log
                )
    return res


def _fmt(summary: dict) -> str:
    return f"{summary['median']:.4g} [{summary['min']:.4g} - {summary['max']:.4g}]"


def _as_measured(figures: dict, log: Callable[[str], None]) -> dict:
    """Log each new figure as soon as it is measured (a run cut short still leaves them in its log); return them."""
    for name, value in figures.items():
        if isinstance(value, dict) and "median" in value:
            log(f"  {name}: {_fmt(value)}")
    return figures


def _rows(res: dict) -> list[tuple[str, dict, dict, bool]]:
    """The table's rows: (figure, tutorial's summary, ours, whether lower is better) for each figure measured."""
    rows = []
    if "ours_train_s" in res:
        name = f"training, {res['epochs']} epochs, seconds (tutorial: extrapolated*)"
        rows.append((name, res["tutorial_train_extrapolated_s"], res["ours_train_s"], True))
    for b in res["batches"]:
        rows.append(
            (
                f"backbone images/s, batch {b}",
                res[f"tutorial_backbone_img_s_b{b}"],
                res[f"ours_backbone_img_s_b{b}"],
                False,
            )
        )
    if "ours_whole_fps_b1" in res:
        name = f"whole model frames/s, batch 1, {res['whole_side']}x{res['whole_side']}"
        rows.append((name, res["tutorial_whole_fps_b1"], res["ours_whole_fps_b1"], False))
    if "ours_video_fps" in res:
        share = f", {res['video_foreground']:.0%} foreground" if "video_foreground" in res else ""
        name = f"video end to end, FPS ({res['video_frames']} frames{share})"
        rows.append((name, res["tutorial_video_fps"], res["ours_video_fps"], False))
    return rows


def markdown_table(res: dict) -> str:
    """The figures as a Markdown table (for the docs, made from a measured JSON by tools/tables.py): median
    [min - max] of the repetitions and the ratio of the medians, or "unreliable"."""
    lines = ["| figure | tutorial's recipe | ours | speed-up |", "|---|---|---|---|"]
    for name, tut, ours, lower_is_better in _rows(res):
        ratio = tut["median"] / ours["median"] if lower_is_better else ours["median"] / tut["median"]
        trusted = tut.get("reliable", True) and ours.get("reliable", True)
        name = name.replace("extrapolated*", f"{res.get('tutorial_epochs_measured', '?')} real epochs, extrapolated")
        lines.append(f"| {name} | {_fmt(tut)} | {_fmt(ours)} | {f'{ratio:.1f}x' if trusted else 'unreliable'} |")
    return "\n".join(lines)


def format_table(res: dict) -> str:
    """The figures as a table: median [min-max] of the repetitions, and the ratio of the medians."""
    rt = res["runtime"]
    device = rt.get("device_name", rt["device"])
    lines = [
        f"{res['arch']} at {res['imgsz'][0]}x{res['imgsz'][1]} on {device}; torch {rt['torch']}, CUDA {rt['cuda']}, "
        f"amp {rt['amp_dtype']}"
        + (f", TF32 {rt['tf32_matmul']}, cudnn.benchmark {rt['cudnn_benchmark']}" if "tf32_matmul" in rt else "")
        + f"; attention: tutorial {res['sdpa']['tutorial']}, ours {res['sdpa']['ours']}",
        f"each figure: median [min-max] of {res['repeats']} runs"
        + (" (--quick: fewer iterations)" if res["quick"] else ""),
        f"{'figure':<52}{'tutorial':>28}{'ours':>28}{'speed-up':>10}",
    ]
    rows = _rows(res)
    unreliable = False
    for name, tut, ours, lower_is_better in rows:
        ratio = tut["median"] / ours["median"] if lower_is_better else ours["median"] / tut["median"]
        trusted = tut.get("reliable", True) and ours.get("reliable", True)
        unreliable |= not trusted
        lines.append(f"{name:<52}{_fmt(tut):>28}{_fmt(ours):>28}{f'{ratio:.1f}x' if trusted else 'unreliable':>10}")
    if unreliable:
        lines.append(
            "unreliable: a spread (max - min) wider than its median; no speed-up is read off it. Run again on "
            "an idle machine, with more --repeats or without --quick."
        )
    if "ours_train_s" in res:
        lines.append(
            f"* the tutorial's recipe ran {res['tutorial_epochs_measured']} real epochs "
            f"({_fmt(res['tutorial_train_measured_s'])} s, every artifact written); the rest of the schedule is "
            "its own mean epoch time times the epochs left. Ours ran every epoch."
        )
    if "ours_train_timings" in res:
        lines += ["our training run, " + line for line in timing_lines(res["ours_train_timings"])]
    return "\n".join(lines)
