"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target."""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np


@functools.cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: str | Path, directory: bool = False) -> None:
    """Give a temp file (or folder) the permissions a plain create would, then rename it over `path`."""
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
    os.replace(tmp, path)


class _Recorder:
    """A file wrapper that remembers the first OSError its writes raised.

    ``torch.save`` turns a failed write (a full disk) into a RuntimeError about stream positions;
    the recorded error says what really happened.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> object:
        return getattr(self.f, name)


def atomic_write(
    path: str | Path, write: Callable[[BinaryIO], object], keep_previous: str | Path | None = None
) -> Path:
    """Call `write` on a temp file beside `path`, then rename it into place; on error the target is untouched.

    With `keep_previous`, the file being replaced is first renamed there (e.g. ``last.prev.pth``).
    A failed write raises OSError("cannot write PATH: reason; the previous version, if any, is intact").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            recorder = _Recorder(f)
            try:
                write(recorder)  # type: ignore[arg-type]
            except RuntimeError:
                if recorder.error is None:
                    raise
                raise recorder.error from None
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        publish(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        reason = err.strerror or str(err)
        raise OSError(err.errno, f"cannot write {path}: {reason}; the previous version, if any, is intact") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def why_missing(path: str | Path) -> str:
    """Why `path` cannot be opened although named: not found, a broken link, or a link loop."""
    path = Path(path)
    if not path.is_symlink():
        return "file not found"
    try:
        path.resolve(strict=True)
    except RuntimeError:  # pathlib's report of a loop
        return "symbolic link loop"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"broken symbolic link to {os.readlink(path)}"
    return "file not found"


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing part of `path` (itself or a parent) when it is not a folder, else None."""
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Raise a clear error unless `path` is, or can be made as, a folder (no part of it is a file)."""
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        what = "is a file" if blocker == path else f"{blocker} is a file"
        raise NotADirectoryError(f"{flag} {path}: {what}, not a folder; choose another {flag}")
    return path


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Raise a clear error unless `path` can be written as a file (not a folder; its parents are folders)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'output'}")
    blocker = _file_in_the_way(path.parent)
    if blocker is not None:
        raise NotADirectoryError(f"{flag} {path}: {blocker} is a file, not a folder; choose another {flag}")
    return path


def check_writable(folder: str | Path, flag: str) -> Path:
    """Raise a clear OSError unless files can be made in `folder` (or, when it does not exist yet, in the nearest
    folder above it that does); nothing is left behind."""
    folder = Path(folder)
    check_output_dir(folder, flag)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise OSError(err.errno, f"{flag} {folder}: cannot write there ({err.strerror or err})") from None
    return folder


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_png(path: str | Path, array: np.ndarray, notes: dict[str, str] | None = None) -> Path:
    """Write an (H, W) or (H, W, 3) uint8 array as PNG atomically, marked as webdino-seg's (see `outputs.MARK`),
    with `notes` as further text entries (e.g. the precision it was computed in)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "webdino-seg")
    for key, value in (notes or {}).items():
        info.add_text(key, value)
    return atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG", compress_level=1, pnginfo=info))


class BackgroundWriter:
    """Runs writes one at a time in a thread beside the caller: `submit` first waits for the write before it
    (so files are written in order, at most one is pending, and its error is raised there), `wait` for the
    last one. What a write saves must be a snapshot: the caller goes on changing its own objects."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending: Future | None = None

    def submit(self, write: Callable[[], object]) -> None:
        """Wait for the write before, then start `write` in the background."""
        self.wait()
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        """Block until the pending write is done; raise its error, if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the pending write (its error is raised) and stop the thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
