"""Download a URL once into a cache folder, trusting nothing the server or the cache says until it is checked.

A cached file is named after a hash of its whole URL (``<16 hex>-<name>``), so two hosts serving one file name
never share a file. Beside it, ``<file>.download.json`` records the URL, the length and the sha256; every use
checks the file against that record. A download is renamed into place only when its length is known (from the
server, or from an expected sha256) and matches; a resumed download checks the server's ``Content-Range``; an
HTML page is refused. A cached file that a reader cannot load is moved aside (`quarantine`) so the next try
downloads it again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm.auto import tqdm

from .files import atomic_write_text

CHUNK = 1 << 20
RECORD_SUFFIX = ".download.json"
RECORD_FORMAT = "webdino-seg/download"


class DownloadError(ConnectionError):
    """A download that failed or whose bytes cannot be trusted; the message names the URL and what to do."""


class ChecksumError(ValueError):
    """A downloaded file whose sha256 is not the expected one."""


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


def url_name(url: str) -> str:
    """The readable part of a URL's file name (its last path part, only safe characters)."""
    name = unquote(Path(urlparse(url).path).name)
    return re.sub(r"[^\w.+-]", "_", name).lstrip(".") or "download"


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def cache_path(url: str, folder: str | Path | None = None) -> Path:
    """Where `url` is cached: ``<folder>/<sha256(url)[:16]>-<name>`` (default folder: the cache's downloads/)."""
    return Path(folder or cache_dir() / "downloads") / f"{_url_key(url)}-{url_name(url)}"


def record_path(path: Path) -> Path:
    """The record beside a downloaded file."""
    return path.with_name(path.name + RECORD_SUFFIX)


def read_record(path: Path) -> dict | None:
    """The download record of `path`, or None when there is none or it is not one."""
    try:
        record = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("format") == RECORD_FORMAT
    return record if ok and isinstance(record.get("sha256"), str) and isinstance(record.get("size"), int) else None


def verified(path: Path, url: str, sha256: str | None = None) -> bool:
    """Whether `path` is a whole download of `url`: its record names that URL, and its size and sha256 (and the
    expected `sha256`, if given) match the file as it is now."""
    record = read_record(path)
    if record is None or record.get("url") != url or not path.is_file():
        return False
    if path.stat().st_size != record["size"] or (sha256 is not None and record["sha256"] != sha256):
        return False
    return sha256_file(path) == record["sha256"]


def quarantine(path: Path) -> Path:
    """Move a downloaded file (and its record) aside as ``<file>.bad``, so the next use downloads it again;
    returns where it went."""
    bad = path.with_name(path.name + ".bad")
    os.replace(path, bad)
    record_path(path).unlink(missing_ok=True)
    return bad


def download_url(
    url: str,
    dest_dir: str | Path | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    *,
    name: str | None = None,
) -> Path:
    """Fetch `url` into the cache (or into `dest_dir` as `name`, default the URL's file name) unless a verified
    copy is there; return the local path.

    An interrupted download resumes from its ``.part`` file where the server honours ranges. A file in
    `dest_dir` that this function did not download from `url` is never replaced: that is an error.
    """
    dest = cache_path(url) if dest_dir is None else Path(dest_dir) / (name or url_name(url))
    if dest.exists():
        if verified(dest, url, sha256):
            return dest
        if dest_dir is not None and read_record(dest) is None:
            raise FileExistsError(
                f"{dest}: exists and was not downloaded from {url} by webdino-seg; move it away or "
                "choose another folder"
            )
        quarantine(dest)  # ours, but changed, cut short or from another URL: fetched again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{_url_key(url)}.part")
    size = _fetch(url, part, progress, timeout, sha256)
    actual = sha256_file(part)
    if sha256 is not None and actual != sha256:
        part.unlink()
        raise ChecksumError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; removed it")
    record = {"format": RECORD_FORMAT, "url": url, "size": size, "sha256": actual}
    atomic_write_text(record_path(dest), json.dumps(record, indent=2) + "\n")
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, progress: bool, timeout: float, sha256: str | None) -> int:
    """Fill `part` with the whole body of `url` (resuming what it holds) and return its length; the length must
    be known from the server, or the expected `sha256` must stand in for it."""
    start = part.stat().st_size if part.exists() else 0
    response = _open(url, start, timeout)
    if response is None:  # 416: the part cannot be continued; start again
        part.unlink(missing_ok=True)
        start, response = 0, _open(url, 0, timeout)
    begun = _range(response, start)
    if begun is None:  # a 206 that does not continue the part: its bytes cannot be trusted; start again
        response.close()
        part.unlink(missing_ok=True)
        start, response = 0, _open(url, 0, timeout)
        begun = _range(response, 0)
    with response:
        kind = response.headers.get("Content-Type", "")
        if kind.split(";")[0].strip().lower() == "text/html":
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"cannot download {url}: the server answered with an HTML page ({kind}), not the "
                "file; check the URL (a login or error page?)"
            )
        start, total = begun
        if total is None and sha256 is None:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"cannot download {url}: the server does not say how long the file is, so a cut-off "
                "download could not be told from a whole one; pass the file's sha256 (--sha256) or "
                "download it yourself and pass the local path"
            )
        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=url_name(url), disable=not progress)
        with open(part, "ab" if start else "wb") as f, bar:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, OSError) as err:
                f.flush()
                raise DownloadError(
                    f"download of {url} broke off at {f.tell()} bytes ({type(err).__name__}); run again to resume"
                ) from None
    got = part.stat().st_size
    if total is not None and got != total:
        raise DownloadError(f"download of {url} stopped at {got} of {total} bytes; run again to resume")
    return got


def _open(url: str, start: int, timeout: float):
    """The response to a GET of `url` from byte `start`; None for a 416 (the range cannot be served)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:
            return None
        raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot download {url}: {reason}") from None


def _range(response, start: int) -> tuple[int, int | None] | None:
    """Where the body starts and the whole file's length (None if unknown): a 206 must continue exactly at
    `start` (``Content-Range: bytes start-end/total``, agreeing with its length; else None), any other answer
    starts over at 0."""
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None and length.isdigit() else None
    if not start or response.status != 206:
        return 0, length
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match or int(match[1]) != start:
        return None
    end, total = int(match[2]), None if match[3] == "*" else int(match[3])
    if (length is not None and length != end - start + 1) or (total is not None and end + 1 != total):
        return None
    return start, total
