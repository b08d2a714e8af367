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
import torch

from ..utils import runtime
from ..utils.files import check_output_file, publish, why_missing
from ..utils.outputs import MARK, check_suffix, guard, may_replace
from ..utils.overlay import overlay
from .predictor import Predictor
from .settings import DEFAULTS

CLOCK = 90_000  # the output's time base, 1/90000 s: exact for 10, 24, 25, 30 and 30000/1001 fps
CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}  # output suffix -> the container written
_END = object()
_TICK = 0.1  # seconds between checks of the stop flag while a queue is full or empty


class VideoError(ValueError):
    """A video that cannot be read or written; the message names the file."""


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counterclockwise, as phones record it) to a decoded frame."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, turns)) if turns else frame


def probe(src: str | Path) -> dict:
    """Upright size, frame rate, frame count (0 when unknown) and rotation of a video file."""
    try:
        with av.open(str(src)) as container:
            if not container.streams.video:
                raise VideoError(f"{src}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            width, height, rotation = stream.width, stream.height, 0
            for frame in container.decode(video=0):
                rotation = int(frame.rotation or 0)
                break
            if round(rotation / 90) % 2:
                width, height = height, width
            return {
                "width": width,
                "height": height,
                "rate": Fraction(rate),
                "frames": stream.frames,
                "rotation": rotation,
            }
    except av.FFmpegError as err:
        raise VideoError(f"{src}: cannot open video ({err})") from None


def _file_frames(src: str | Path, warnings: list[str], threads: int = 1) -> Iterator[tuple[np.ndarray, float | None]]:
    try:
        container = av.open(str(src))
    except av.FFmpegError as err:
        raise VideoError(f"{src}: cannot open video ({err})") from None
    with container:
        container.streams.video[0].thread_type = "AUTO"
        container.streams.video[0].thread_count = threads
        count = 0
        try:
            for frame in container.decode(video=0):
                count += 1
                time = float(frame.time) if frame.time is not None else None  # None in raw streams
                yield upright(frame.to_ndarray(format="rgb24"), int(frame.rotation or 0)), time
        except av.FFmpegError as err:
            if count == 0:
                raise VideoError(f"{src}: cannot decode any frame ({err})") from None
            warnings.append(f"{src}: decoding stopped after {count} frames ({err}); the file may be truncated")


def first_frame(src: str | Path) -> np.ndarray:
    """The first frame of a video file, upright, as (H, W, 3) uint8 RGB."""
    return next(_file_frames(src, []))[0]


def _camera_frames(index: int) -> Iterator[tuple[np.ndarray, None]]:
    import cv2

    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise VideoError(f"camera {index}: cannot be opened")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), None
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
        "rotation": 0,
    }
    cap.release()
    return info


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put `item` unless `stop` is set first; False when it was not put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_TICK)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> object:
    """The next item, or `_END` once `stop` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=_TICK)
        except queue.Empty:
            continue
    return _END


def _fail(errors: list[BaseException], err: BaseException, stop: threading.Event) -> None:
    errors.append(err)
    stop.set()  # every stage sees this within _TICK and ends


def _reader(
    frames: Iterator[tuple[np.ndarray, float | None]],
    out: queue.Queue,
    batch: int,
    max_frames: int | None,
    errors: list[BaseException],
    stop: threading.Event,
) -> None:
    runtime.yield_to_model()
    try:
        chunk = []
        for i, frame in enumerate(frames):
            if stop.is_set() or (max_frames is not None and i >= max_frames):
                break
            chunk.append(frame)
            if len(chunk) == batch and not _put(out, chunk, stop):
                return
            if len(chunk) == batch:
                chunk = []
        if chunk:
            _put(out, chunk, stop)
    except BaseException as err:  # handed to the main thread
        _fail(errors, err, stop)
    finally:
        _put(out, _END, stop)
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def even_size(width: int, height: int) -> tuple[int, int]:
    """The size H.264 in yuv420p can hold: odd sides padded by one pixel."""
    return width + width % 2, height + height % 2


def _pad_even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _writer(
    path: Path, info: dict, inbox: queue.Queue, errors: list[BaseException], stop: threading.Event, draw=overlay
) -> None:
    """Encode (frame, mask, fps, time, drawn) items: the overlay is drawn here, off the main thread, unless `drawn`
    already holds it; each frame keeps its input timestamp (variable frame rates stay as they were), else it is
    placed at the input's frame rate."""
    runtime.yield_to_model()
    try:
        with av.open(str(path), mode="w", format=CONTAINERS[info.get("suffix", ".mp4")]) as container:
            # says whose output this is (see utils.outputs) and the precision the masks were computed in
            container.metadata["comment"] = f"{MARK} video; precision {info.get('precision', 'fp32')}"
            stream = container.add_stream("libx264", rate=info["rate"])
            stream.width, stream.height = even_size(info["width"], info["height"])
            stream.pix_fmt = "yuv420p"  # plays everywhere (odd sizes are padded by a pixel)
            stream.options = {"preset": "veryfast", "crf": "20"}  # keeps encoding off the critical path
            stream.codec_context.thread_count = info["codec_threads"]
            stream.codec_context.time_base = Fraction(1, CLOCK)
            index, last, start = 0, -1, None
            while (item := _get(inbox, stop)) is not _END:
                image, mask, fps, stamp, drawn = item
                picture = drawn if drawn is not None else _labelled(draw(image, mask), fps)
                frame = av.VideoFrame.from_ndarray(_pad_even(picture), format="rgb24")
                if stamp is not None and start is None:
                    start = stamp
                at = stamp - start if stamp is not None else index / info["rate"]
                last = frame.pts = max(round(at * CLOCK), last + 1)  # strictly increasing, as encoders require
                frame.time_base = Fraction(1, CLOCK)
                index += 1
                container.mux(stream.encode(frame))
            if not stop.is_set():
                container.mux(stream.encode())
    except BaseException as err:
        _fail(errors, err, stop)


def _labelled(frame: np.ndarray, fps: float | None) -> np.ndarray:
    """The frame with its frame-rate label, or as it is where `fps` is None (--no-fps-label)."""
    return frame if fps is None else draw_fps(frame, fps)


def draw_fps(frame: np.ndarray, fps: float) -> np.ndarray:
    """Write the end-to-end frame rate in the top-left corner (white on a dark box), as the tutorial did."""
    import cv2

    text = f"{fps:.1f} FPS (end to end)"
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.5, frame.shape[1] / 1100)
    thickness = max(1, round(2 * scale))
    (width, height), base = cv2.getTextSize(text, font, scale, thickness)
    x0, y0, pad = 10, 10, max(4, round(6 * scale))
    box = frame[y0 : y0 + height + base + 2 * pad, x0 : x0 + width + 2 * pad]
    box[:] = (box * 0.35).astype(frame.dtype)  # darken behind the text so it reads on any background
    cv2.putText(frame, text, (x0 + pad, y0 + pad + height), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
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


def is_camera(src: str | int | Path) -> bool:
    """A camera is a bare index (``0``) that is not also an existing path; ``camera:N`` is always a camera."""
    if isinstance(src, int):
        return True
    text = str(src)
    return text.startswith("camera:") or (text.isdigit() and not Path(text).exists())


def _source(src: str | int | Path, threads: int = 1) -> tuple[dict, Iterator[np.ndarray], list[str]]:
    """(info, frames, warnings) for a file or a camera; file errors name the file."""
    warnings: list[str] = []
    if is_camera(src):
        index = int(str(src).removeprefix("camera:"))
        return _camera_info(index) | {"codec_threads": threads}, _camera_frames(index), warnings
    path = Path(src)
    if not path.exists():
        raise VideoError(f"{src}: video {why_missing(path)}")
    if path.is_dir():
        raise VideoError(f"{src}: is a folder, not a video file")
    info = probe(path)
    if info["rotation"]:
        warnings.append(f"{src}: stored rotated by {info['rotation']} degrees; frames are turned upright")
    if info["width"] % 2 or info["height"] % 2:
        w, h = even_size(info["width"], info["height"])
        warnings.append(f"{src}: {info['width']}x{info['height']} is odd-sized; the output is padded to {w}x{h}")
    return info | {"codec_threads": threads}, _file_frames(path, warnings, threads), warnings


def _write_error(err: BaseException, dst: Path, src: object) -> BaseException:
    """The error to show for a failed pipeline stage: a full disk or other I/O error names the output."""
    errno_ = getattr(err, "errno", None)
    if isinstance(err, OSError) and errno_ is not None and not isinstance(err, FileNotFoundError):
        return VideoError(f"cannot write {dst}: {os.strerror(errno_)}")
    if isinstance(err, (VideoError, ValueError, OSError)):
        return err
    return VideoError(f"{src}: {err}")


def plan_video(src: str | int | Path, dst: str | Path, overwrite: bool = False, inputs: tuple[Path, ...] = ()) -> Path:
    """Check the output before anything runs: a video name (.mp4, .mov or .mkv: H.264 in that container), not
    the input video nor another input (`inputs`, e.g. the model), and not a file webdino-seg did not write
    unless `overwrite`."""
    dst = check_output_file(dst)
    check_suffix(dst, tuple(CONTAINERS), "video writes H.264 video")
    guard([dst], [*([] if is_camera(src) else [Path(src)]), *inputs])
    may_replace(dst, overwrite)
    return dst


def _check_counts(batch: int, max_frames: int | None) -> None:
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {max_frames}")


def run_video(
    predictor: Predictor,
    src: str | int | Path,
    dst: str | Path,
    *,
    batch: int = DEFAULTS.batch,
    max_frames: int | None = None,
    show: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    fps_label: bool = True,
    codec_threads: int | None = None,
) -> dict:
    """Segment every frame of `src` (file or camera index) and write an upright overlay MP4 of the same rate,
    with the end-to-end frame rate in a corner unless `fps_label` is False. Decoding and encoding use
    `codec_threads` threads each (default: a quarter of the model's, at least 1). Any failure (reading, the
    model, writing, Ctrl-C) stops all three stages promptly and removes the partial output; nothing is written to
    `dst` unless every frame was encoded."""
    _check_counts(batch, max_frames)
    dst = plan_video(src, dst, overwrite)  # before anything is decoded
    info, frames_iter, warnings = _source(src, codec_threads or runtime.codec_threads(torch.get_num_threads()))
    said = predictor.precision if predictor.precision == "fp32" else f"{predictor.precision} by {predictor.engine}"
    info["suffix"], info["precision"] = dst.suffix.lower(), said
    dst.parent.mkdir(parents=True, exist_ok=True)
    frames_q: queue.Queue = queue.Queue(maxsize=4)
    encode_q: queue.Queue = queue.Queue(maxsize=4 * batch)
    errors: list[BaseException] = []
    stop = threading.Event()
    total = min(info["frames"] or 0, max_frames or 10**12) or None
    published, reader, writer = False, None, None
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.stem}.", suffix=".mp4.tmp")
    try:  # from the temp file's first moment: a signal anywhere after this removes it
        tmp = Path(tmp_name)
        os.close(fd)
        reader = threading.Thread(
            target=_reader, args=(frames_iter, frames_q, batch, max_frames, errors, stop), daemon=True
        )
        writer = threading.Thread(target=_writer, args=(tmp, info, encode_q, errors, stop, predictor.draw), daemon=True)
        start = time.perf_counter()
        reader.start()
        writer.start()
        done = _segment(predictor, frames_q, encode_q, stop, total, show, progress, start, fps_label)
        _put(encode_q, _END, stop)
        writer.join()
        if errors:
            raise _write_error(errors[0], dst, src)
        if done == 0:
            raise VideoError(f"{src}: the video has no frames")
        publish(tmp, dst)
        published = True
    finally:
        stop.set()  # a no-op on success; on any failure or Ctrl-C, every stage ends within _TICK
        for thread in (writer, reader):
            if thread is not None and thread.is_alive():
                thread.join(timeout=10)
        if not published:
            Path(tmp_name).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    size = {"width": info["width"], "height": info["height"], "rate": float(info["rate"])}
    return {"frames": done, "seconds": seconds, "fps": done / seconds, **size, "output": str(dst), "warnings": warnings}


def _segment(
    predictor: Predictor,
    frames_q: queue.Queue,
    encode_q: queue.Queue,
    stop: threading.Event,
    total: int | None,
    show: bool,
    progress: bool,
    start: float,
    fps_label: bool = True,
) -> int:
    """The main thread's stage: batches of (frame, time) in, (frame, mask, FPS so far, time, drawn) out to the
    writer; returns the
    frames segmented. With `show`, each overlay is also shown while a window can be opened."""
    from tqdm.auto import tqdm

    done, window = 0, show
    with tqdm(total=total, unit="frame", desc="video", disable=not progress) as bar:
        while (chunk := _get(frames_q, stop)) is not _END:
            masks = predictor.predict_batch([frame for frame, _ in chunk])
            done += len(chunk)
            fps = done / max(time.perf_counter() - start, 1e-9) if fps_label else None  # end to end so far
            for (frame, at), mask in zip(chunk, masks, strict=True):
                item = (frame, mask, fps, at, None)
                if window:
                    drawn = _labelled(predictor.draw(frame, mask), fps)
                    item, window = (frame, mask, fps, at, drawn), _show(drawn)
                    if not window:
                        bar.write("--show: no window available (headless OpenCV or no display)", file=sys.stderr)
                if not _put(encode_q, item, stop):
                    return done
            bar.update(len(chunk))
    return done
