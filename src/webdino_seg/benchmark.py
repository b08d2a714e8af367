"""Side-by-side timings of the tutorial's recipe and ours, in one process on one device.

The tutorial's recipe: fp32, plain (math) attention, batch 8, the frozen backbone recomputed for
every training step, frame-by-frame video. Ours: bf16 autocast on GPU with fused SDPA kernels,
backbone features computed once per cached view, the head trained from the cache, batched video.
Times exclude image decoding in both, except the video figures, which are end to end.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .factory import create_model
from .losses import segmentation_loss
from .model import SegmentationModel
from .predictor import Predictor
from .runtime import autocast, configure, describe, resolve_device
from .train import train_step
from .variants import get_variant
from .video import run_video

TRAIN_IMAGES, VALID_IMAGES, EPOCHS, BATCH = 146, 24, 60, 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


@contextlib.contextmanager
def _peak(device: torch.device, out: dict, key: str):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        out[key] = torch.cuda.max_memory_allocated(device) / 2**30


def _tutorial_mode():
    return sdpa_kernel(SDPBackend.MATH)


def tutorial_step(model: SegmentationModel, optimizer, images: torch.Tensor, masks: torch.Tensor, dev) -> None:
    """The tutorial's training step: fp32, plain (math) attention, the frozen backbone run on every batch."""
    with _tutorial_mode():
        train_step(model, optimizer, images, masks, dev, amp=False)


def our_step(model: SegmentationModel, optimizer, features: torch.Tensor, masks: torch.Tensor, dev) -> None:
    """Our training step: the head alone on cached backbone features, bf16 autocast on GPU."""
    train_step(model.head, optimizer, features.float(), masks, dev, amp=True)


def benchmark(
    arch: str = "webdino-300m",
    imgsz: tuple[int, int] = (644, 644),
    device: str = "auto",
    quick: bool = False,
    video: str | Path | None = None,
    views: int = 4,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure both recipes; return a dict of figures (seconds, images/s, FPS, GiB)."""
    dev = resolve_device(device)
    configure(dev)
    iters, warmup = (1, 1) if quick else (10, 3)
    batches = (1, 2) if quick and dev.type == "cpu" else (1, 8, 32)
    train_batch = 2 if quick and dev.type == "cpu" else BATCH
    torch.manual_seed(0)
    model = create_model(arch, num_classes=2).to(dev)
    cfg = get_variant(arch)
    h, w = imgsz
    grid = (h // cfg.patch_size, w // cfg.patch_size)
    res: dict = {
        "arch": arch,
        "imgsz": list(imgsz),
        "device": str(dev),
        "quick": quick,
        "batches": list(batches),
        "train_batch_measured": train_batch,
        "views": views,
    }
    res |= {"runtime": describe(dev)}
    if dev.type == "cuda":
        res["device_name"] = torch.cuda.get_device_name(dev)

    def images(b: int) -> torch.Tensor:
        return torch.randn(b, 3, h, w, device=dev)

    masks = torch.randint(0, 2, (train_batch, h, w), device=dev)

    # --- tutorial: fp32, math attention, backbone recomputed every step ---------------------------
    opt = torch.optim.AdamW(model.head.parameters(), lr=1e-4)
    x_train = images(train_batch)

    log("tutorial recipe: training step ...")
    with _tutorial_mode(), _peak(dev, res, "tutorial_train_peak_gib"):
        per_img = _time(lambda: tutorial_step(model, opt, x_train, masks, dev), dev, iters, warmup) / train_batch
    res["tutorial_train_img_s"] = 1 / per_img
    res["tutorial_train_s_per_step_b8"] = per_img * BATCH
    x1 = images(1)
    with torch.inference_mode(), _tutorial_mode(), _peak(dev, res, "tutorial_infer_peak_gib"):
        res["tutorial_infer_ms_b1"] = 1000 * _time(lambda: model(x1), dev, iters, warmup)
        x_valid = images(batches[-1] if dev.type == "cpu" else BATCH)
        valid_per_img = _time(lambda: model(x_valid), dev, iters, warmup) / len(x_valid)
    steps = math.ceil(TRAIN_IMAGES / BATCH)
    res["tutorial_epoch_s"] = steps * res["tutorial_train_s_per_step_b8"] + VALID_IMAGES * valid_per_img
    res["tutorial_schedule_s"] = EPOCHS * res["tutorial_epoch_s"]

    # --- backbone throughput, both ways ------------------------------------------------------------
    for b in batches:
        xb = images(b)
        log(f"backbone batch {b} ...")
        with torch.inference_mode():
            with _tutorial_mode():
                res[f"tutorial_backbone_img_s_b{b}"] = b / _time(lambda xb=xb: model.features(xb), dev, iters, warmup)
            with autocast(dev), _peak(dev, res, f"ours_backbone_peak_gib_b{b}"):
                res[f"ours_backbone_img_s_b{b}"] = b / _time(lambda xb=xb: model.features(xb), dev, iters, warmup)

    # --- ours: extract once, train the head from the cache ----------------------------------------
    best = max(batches)
    extract_s = (TRAIN_IMAGES * views + VALID_IMAGES) / res[f"ours_backbone_img_s_b{best}"]
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    feats = torch.randn(BATCH, model.backbone.embed_dim, *grid, device=dev, dtype=dtype)
    target = torch.randint(0, 2, (BATCH, h, w), device=dev)
    opt = torch.optim.AdamW(model.head.parameters(), lr=1e-4)

    def head_eval() -> torch.Tensor:
        with torch.no_grad(), autocast(dev):
            return segmentation_loss(model.head(feats.float()), target)[1]

    log("ours: head step on cached features ...")
    with _peak(dev, res, "ours_head_peak_gib"):
        res["ours_head_s_per_step_b8"] = _time(
            lambda: our_step(model, opt, feats, target, dev), dev, max(iters, 5), warmup
        )
        head_eval_s = _time(head_eval, dev, max(iters, 5), warmup)
    res["ours_extract_s"] = extract_s
    res["ours_epoch_s"] = steps * res["ours_head_s_per_step_b8"] + math.ceil(VALID_IMAGES / BATCH) * head_eval_s
    res["ours_schedule_s"] = extract_s + EPOCHS * res["ours_epoch_s"]

    # --- video end to end --------------------------------------------------------------------------
    if video is not None:
        frames = 2 if quick and dev.type == "cpu" else (24 if quick else 240)
        mean, std = cfg.mean, cfg.std
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            log(f"video: {frames} frames each way ...")
            slow = Predictor(model, imgsz, mean, std, ["background", "person"], dev, amp=False)
            with _tutorial_mode():
                info = run_video(slow, video, Path(tmp) / "t.mp4", batch=1, max_frames=frames, progress=False)
            res["tutorial_video_fps"] = info["fps"]
            fast = Predictor(model, imgsz, mean, std, ["background", "person"], dev, amp=True)
            info = run_video(fast, video, Path(tmp) / "o.mp4", batch=8, max_frames=frames, progress=False)
            res["ours_video_fps"] = info["fps"]
            res["video_frames"] = frames
    res["process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return res


def format_table(res: dict) -> str:
    """The figures as a table with ours/tutorial ratios (speed-ups: higher is better)."""
    rows: list[tuple[str, float, float, str]] = [
        ("training, s per epoch (146 train + 24 valid)", res["tutorial_epoch_s"], res["ours_epoch_s"], "s"),
        (
            f"training, 60 epochs (ours: + extract {res['views']} views once)",
            res["tutorial_schedule_s"],
            res["ours_schedule_s"],
            "s",
        ),
    ]
    rows += [
        (
            f"backbone images/s, batch {b}",
            res[f"tutorial_backbone_img_s_b{b}"],
            res[f"ours_backbone_img_s_b{b}"],
            "img/s",
        )
        for b in res["batches"]
    ]
    if "ours_video_fps" in res:
        rows.append(
            (
                f"video end to end, FPS ({res['video_frames']} frames)",
                res["tutorial_video_fps"],
                res["ours_video_fps"],
                "fps",
            )
        )
    header = f"{res['arch']} at {res['imgsz'][0]}x{res['imgsz'][1]} on {res.get('device_name', res['device'])}"
    if res["quick"]:
        header += " (--quick: fewer iterations"
        header += f", training step measured at batch {res['train_batch_measured']})" if res["device"] == "cpu" else ")"
    lines = [header, f"{'figure':<58}{'tutorial':>12}{'ours':>12}{'speed-up':>10}"]
    for name, tut, ours, unit in rows:
        speed = tut / ours if unit == "s" else ours / tut
        lines.append(f"{name:<58}{tut:>12.4g}{ours:>12.4g}{speed:>9.1f}x")
    lines.append(
        f"tutorial: training step b8 {res['tutorial_train_s_per_step_b8']:.4g} s "
        f"({res['tutorial_train_img_s']:.3g} img/s), inference b1 {res['tutorial_infer_ms_b1']:.1f} ms/img"
    )
    lines.append(
        f"ours: feature extraction {res['ours_extract_s']:.3g} s once, head step b8 "
        f"{1000 * res['ours_head_s_per_step_b8']:.2f} ms"
    )
    mem = {k: v for k, v in res.items() if k.endswith("_gib")}
    lines.append("peak memory (GiB): " + ", ".join(f"{k.removesuffix('_gib')} {v:.2f}" for k, v in mem.items()))
    return "\n".join(lines)
