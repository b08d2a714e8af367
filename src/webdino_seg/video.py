"""Video inference: decode (reader thread), segment in batches, overlay, encode H.264 (writer thread).

Decoding and encoding use PyAV; a camera index is read with OpenCV. The three stages overlap
through bounded queues, so the accelerator is not left waiting on I/O.
"""

from __future__ import annotations

import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .io import publish
from .overlay import overlay
from .predictor import Predictor

_END = object()


class VideoError(ValueError):
    """A video that cannot be read or written; the message names the file."""


def probe(src: str | Path) -> dict:
    """Size, frame rate and frame count (0 when unknown) of a video file."""
    try:
        with av.open(str(src)) as container:
            if not container.streams.video:
                raise VideoError(f"{src}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            return {"width": stream.width, "height": stream.height, "rate": Fraction(rate), "frames": stream.frames}
    except av.FFmpegError as err:
        raise VideoError(f"{src}: cannot open video ({err})") from None


def _file_frames(src: str | Path, warnings: list[str]) -> Iterator[np.ndarray]:
    try:
        container = av.open(str(src))
    except av.FFmpegError as err:
        raise VideoError(f"{src}: cannot open video ({err})") from None
    with container:
        count = 0
        try:
            for frame in container.decode(video=0):
                count += 1
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as err:
            if count == 0:
                raise VideoError(f"{src}: cannot decode any frame ({err})") from None
            warnings.append(f"{src}: decoding stopped after {count} frames ({err}); the file may be truncated")


def _camera_frames(index: int) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise VideoError(f"camera {index}: cannot be opened")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def _camera_info(index: int) -> dict:
    import cv2

    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise VideoError(f"camera {index}: cannot be opened")
    info = {
        "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        "rate": Fraction(cap.get(cv2.CAP_PROP_FPS) or 30).limit_denominator(1001),
        "frames": 0,
    }
    cap.release()
    return info


def _reader(
    frames: Iterator[np.ndarray],
    out: queue.Queue,
    batch: int,
    max_frames: int | None,
    errors: list[BaseException],
    stop: threading.Event,
) -> None:
    try:
        chunk = []
        for i, frame in enumerate(frames):
            if stop.is_set() or (max_frames is not None and i >= max_frames):
                break
            chunk.append(frame)
            if len(chunk) == batch:
                out.put(chunk)
                chunk = []
        if chunk:
            out.put(chunk)
    except BaseException as err:  # handed to the main thread
        errors.append(err)
    finally:
        out.put(_END)


def _writer(path: Path, info: dict, inbox: queue.Queue, errors: list[BaseException]) -> None:
    try:
        even = info["width"] % 2 == 0 and info["height"] % 2 == 0
        with av.open(str(path), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=info["rate"])
            stream.width, stream.height = info["width"], info["height"]
            stream.pix_fmt = "yuv420p" if even else "yuv444p"
            stream.options = {"preset": "veryfast", "crf": "20"}  # keeps encoding off the critical path
            stream.codec_context.time_base = 1 / info["rate"]
            index = 0
            while (item := inbox.get()) is not _END:
                frame = av.VideoFrame.from_ndarray(item, format="rgb24")
                frame.pts = index
                index += 1
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    except BaseException as err:
        errors.append(err)
        while inbox.get() is not _END:  # keep draining so the producer never blocks
            pass


def draw_fps(frame: np.ndarray, fps: float) -> np.ndarray:
    """Write the frame rate in the top-left corner, as the tutorial did."""
    import cv2

    scale = max(0.6, frame.shape[1] / 900)
    for colour, thickness in (((0, 0, 0), int(4 * scale)), ((255, 255, 255), max(1, int(2 * scale)))):  # outlined
        cv2.putText(
            frame,
            f"{fps:.1f} FPS",
            (15, int(40 * scale)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            colour,
            thickness,
            cv2.LINE_AA,
        )
    return frame


def _show(frame: np.ndarray) -> bool:
    """Show a frame in a window; False when no window can be opened (headless OpenCV, no display)."""
    import cv2

    try:
        cv2.imshow("webdino-seg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        cv2.waitKey(1)
        return True
    except cv2.error:
        return False


def run_video(
    predictor: Predictor,
    src: str | int | Path,
    dst: str | Path,
    batch: int = 8,
    max_frames: int | None = None,
    show: bool = False,
    progress: bool = True,
) -> dict:
    """Segment every frame of `src` (file or camera index) and write an overlay MP4 of the same size and rate."""
    from tqdm.auto import tqdm

    camera = isinstance(src, int) or (isinstance(src, str) and src.isdigit())
    if camera:
        info, frames_iter = _camera_info(int(src)), _camera_frames(int(src))
    else:
        if not Path(src).exists():
            raise VideoError(f"{src}: video file not found")
        info = probe(src)
        warnings: list[str] = []
        frames_iter = _file_frames(src, warnings)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {max_frames}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.stem}.", suffix=".mp4.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    frames_q: queue.Queue = queue.Queue(maxsize=4)
    encode_q: queue.Queue = queue.Queue(maxsize=4 * batch)
    errors: list[BaseException] = []
    stop = threading.Event()
    reader = threading.Thread(
        target=_reader, args=(frames_iter, frames_q, batch, max_frames, errors, stop), daemon=True
    )
    writer = threading.Thread(target=_writer, args=(tmp, info, encode_q, errors), daemon=True)
    total = min(info["frames"] or 0, max_frames or 10**12) or None
    done, fps, window, reader_done = 0, 0.0, show, False
    start = time.perf_counter()
    reader.start()
    writer.start()
    try:
        with tqdm(total=total, unit="frame", desc="video", disable=not progress) as bar:
            while True:
                chunk = frames_q.get()
                if chunk is _END:
                    reader_done = True
                    break
                t0 = time.perf_counter()
                masks = predictor.predict_batch(chunk)
                now = 1.0 / max((time.perf_counter() - t0) / len(chunk), 1e-9)
                fps = now if fps == 0 else 0.8 * fps + 0.2 * now
                for frame, mask in zip(chunk, masks, strict=True):
                    out = draw_fps(overlay(frame, mask), fps)
                    encode_q.put(out)
                    if window:
                        window = _show(out)
                        if not window:
                            bar.write("--show: no window available (headless OpenCV or no display)", file=sys.stderr)
                done += len(chunk)
                bar.update(len(chunk))
                if errors:
                    break
    finally:
        stop.set()
        if not reader_done:  # unblock the reader so it can see `stop` and finish
            while frames_q.get() is not _END:
                pass
        encode_q.put(_END)
        writer.join()
        reader.join()
    if errors:
        tmp.unlink(missing_ok=True)
        err = errors[0]
        raise err if isinstance(err, (VideoError, ValueError, OSError)) else VideoError(f"{src}: {err}")
    if done == 0:
        tmp.unlink(missing_ok=True)
        raise VideoError(f"{src}: the video has no frames")
    publish(tmp, dst)
    seconds = time.perf_counter() - start
    return {
        "frames": done,
        "seconds": seconds,
        "fps": done / seconds,
        "width": info["width"],
        "height": info["height"],
        "rate": float(info["rate"]),
        "output": str(dst),
        "warnings": [] if camera else warnings,
    }
