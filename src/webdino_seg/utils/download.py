"""Download a URL once into a cache folder: progress bar, resume, size and checksum checks, atomic rename."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

CHUNK = 1 << 20


def cache_dir() -> Path:
    """The folder for downloaded weights and data: ``$WEBDINO_SEG_CACHE`` or ``~/.cache/webdino-seg``."""
    return Path(os.environ.get("WEBDINO_SEG_CACHE", Path.home() / ".cache" / "webdino-seg"))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_url(
    url: str,
    dest_dir: str | Path | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Fetch `url` into `dest_dir` (default: the cache) unless already there; return the local path.

    An interrupted download resumes from its ``.part`` file when the server honours ranges. The
    file is renamed into place only once its size matches the server's and, if given, its sha256.
    """
    name = Path(urlparse(url).path).name or "download"
    dest = Path(dest_dir or cache_dir() / "downloads") / name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the part file is already complete
            response = None
        else:
            raise ConnectionError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConnectionError(f"cannot download {url}: {reason}") from None
    if response is not None:
        with response:
            if start and response.status != 206:  # server ignored the range: start over
                start = 0
            length = response.headers.get("Content-Length")
            total = int(length) + start if length is not None else None
            with (
                open(part, "ab" if start else "wb") as f,
                tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=name, disable=not progress) as bar,
            ):
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
            if total is not None and part.stat().st_size != total:
                raise ConnectionError(
                    f"download of {url} stopped at {part.stat().st_size} of {total} bytes; run again to resume"
                )
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise ValueError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}")
    os.replace(part, dest)
    return dest
