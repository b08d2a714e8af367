"""`video` against the pace of its own codecs: a bare PyAV decode + encode of the same clip (same x264 settings and
threads, no model, no drawing) and the whole pipeline with the tiny backbone, in one run, with the overlay as it
was (numpy float blending of the masked pixels) and as it is (a cv2 table lookup, equal pixel for pixel).

The model is webdino-tiny with random weights and the simple head, its person bias set so that `--foreground` of
the first frame is labelled person: a random model's share decides the drawing cost, so it is chosen and stated.

    python benchmarks/video_pace.py [--video ../shared/data/videos/people_walking_close.mp4] [--frames 300]
        [--foreground 0.5 0.95] [--json benchmarks/measured/video_pace-cpu.json]

The JSON is what `tools/tables.py` makes the table in docs/benchmarks.md from.
"""

# ruff: noqa: E402 (torch and what imports it load after video_environment(), as in `webdino-seg video`)
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from webdino_seg.app.cli import video_environment

video_environment()  # as `webdino-seg video` runs: set before torch loads (OpenMP reads it then)

import av
import numpy as np
import torch
from measured_json import write_measured

from webdino_seg.inference.predictor import Predictor
from webdino_seg.inference.video import run_video
from webdino_seg.models.builder import create_backbone
from webdino_seg.models.heads import create_head
from webdino_seg.models.segmentation import SegmentationModel
from webdino_seg.utils import overlay as overlay_mod
from webdino_seg.utils import runtime

VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "people_walking_close.mp4"


def numpy_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, colors: np.ndarray | None = None):
    """The overlay before the cv2 lookup: float blending of the masked pixels (the reference it must equal)."""
    lut = overlay_mod._DEFAULT_LUT if colors is None else overlay_mod._lut(colors)
    out = image.copy()
    fg = lut[mask].any(-1) if colors is not None else mask != 0
    if fg.any():
        blended = (1 - alpha) * image[fg].astype(np.float32) + alpha * lut[mask[fg]]
        out[fg] = (blended + 0.5).astype(np.uint8)
    return out


def bare(video: Path, frames: int, threads: int, out: Path) -> float:
    """Frames per second of decoding `frames` frames to RGB arrays and encoding them back, as `video` does."""
    start = time.perf_counter()
    with av.open(str(video)) as source, av.open(str(out), mode="w") as sink:
        stream_in = source.streams.video[0]
        stream_in.thread_type, stream_in.codec_context.thread_count = "AUTO", threads
        stream = sink.add_stream("libx264", rate=stream_in.average_rate)
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20"}
        stream.codec_context.thread_count = threads
        done = 0
        for frame in source.decode(stream_in):
            picture = frame.to_ndarray(format="rgb24")
            sink.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
            done += 1
            if done == frames:
                break
        sink.mux(stream.encode())
    return done / (time.perf_counter() - start)


def tiny_predictor(video: Path, foreground: float) -> Predictor:
    """The tiny random model, its person bias set so that `foreground` of the clip's first frame is person."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    backbone = create_backbone("webdino-tiny", weights="random").eval()
    head = create_head("simple", backbone.embed_dim, 2)
    model = SegmentationModel(backbone, head).eval()
    size = (224, 392)
    with av.open(str(video)) as source:
        first = next(source.decode(video=0)).to_ndarray(format="rgb24")
    x = torch.from_numpy(first).permute(2, 0, 1)[None].float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (backbone.cfg.mean, backbone.cfg.std))
    x = (F.interpolate(x, size=size, mode="bilinear") - mean) / std
    with torch.no_grad():
        logits = model(x)[0]
        gap = torch.quantile((logits[1] - logits[0]).flatten(), 1 - foreground)
        head.decode[-1].bias[1] -= gap
    return Predictor(model, size, backbone.cfg.mean, backbone.cfg.std, ["background", "person"], device="cpu")


def pipelines(video: Path, frames: int, foreground: float, threads: int, work: Path) -> list[dict]:
    """The bare codecs, then the video pipeline with each overlay, in one run: FPS and the ratio to bare."""
    predictor = tiny_predictor(video, foreground)
    bare_fps = bare(video, frames, threads, work / "b.mp4")
    rows = [{"pipeline": "bare PyAV decode + encode", "fps": bare_fps, "x_bare": None}]
    for label, draw in (("video, numpy overlay (before)", numpy_overlay), ("video, cv2 overlay (now)", None)):
        if draw is not None:
            kept_draw = predictor.draw
            predictor.draw = lambda image, mask, f=draw: f(image, mask, colors=predictor.colors)  # type: ignore
        cpu0 = time.process_time()
        result = run_video(
            predictor, video, work / f"{len(rows)}.mp4", max_frames=frames, progress=False, codec_threads=threads
        )
        cpu_ms = (time.process_time() - cpu0) * 1000 / result["frames"]
        if draw is not None:
            predictor.draw = kept_draw  # type: ignore[method-assign]
        rows.append({"pipeline": label, "fps": result["fps"], "x_bare": result["fps"] / bare_fps, "cpu_ms": cpu_ms})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=VIDEO)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument(
        "--foreground", type=float, nargs="+", default=[0.5, 0.95], help="shares of each frame the model labels"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here (tools/tables.py reads them)")
    args = parser.parse_args()
    threads = runtime.codec_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as work:
        runs = {
            f"{share:g}": pipelines(args.video, args.frames, share, threads, Path(work)) for share in args.foreground
        }
    print(
        f"clip {args.video.name}, {args.frames} frames, torch threads {torch.get_num_threads()}, codec threads "
        f"{threads}"
    )
    for share, rows in runs.items():
        print(f"the model labels {float(share):.0%} of the first frame person")
        print(f"{'pipeline':34} {'FPS':>7} {'x bare':>7} {'CPU ms/frame':>13}")
        for row in rows:
            ratio = "" if row["x_bare"] is None else f"{row['x_bare']:7.2f}"
            cpu = f"{row['cpu_ms']:13.1f}" if "cpu_ms" in row else ""
            print(f"{row['pipeline']:34} {row['fps']:7.1f} {ratio:>7} {cpu}")
    write_measured(
        args.json,
        "video-pace",
        clip=args.video.name,
        frames=args.frames,
        model="webdino-tiny, random weights, simple head, at 224x392",
        torch_threads=torch.get_num_threads(),
        codec_threads=threads,
        environment={k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
        runs=runs,
    )


if __name__ == "__main__":
    main()
