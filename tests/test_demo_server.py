"""The demo stays up and holds its limits: a real uvicorn server on 127.0.0.1, real HTTP requests (concurrent
uploads, a slow client, oversized, chunked, malformed and decompression-bomb bodies), bounded in count and time."""

from __future__ import annotations

import http.client
import io
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import huge_png, serving

uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture
def server(ckpt: Path):
    from webdino_seg import Predictor
    from webdino_seg.app.demo import create_app

    app = create_app(Predictor.from_checkpoint(ckpt, device="cpu"), max_bytes=512 * 1024, max_waiting=2)
    with serving(app, timeout_keep_alive=2) as port:
        yield port, app


def _multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _post(port: int, data: bytes, name: str, timeout: float = 60) -> tuple[int, str]:
    body, kind = _multipart(data, name)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/", body=body, headers={"Content-Type": kind})
    response = conn.getresponse()
    return response.status, response.read().decode(errors="replace")


def _health(port: int) -> float:
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().read() == b"ok"
    return time.monotonic() - start


def _png(size: tuple[int, int] = (200, 150)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_limits_hold_however_the_body_comes(server, tmp_path: Path) -> None:
    port, app = server
    assert _health(port) < 2
    status, page = _post(port, b"x" * (600 * 1024), "big.png")  # over the limit, with a Content-Length
    assert status == 413 and "too large" in page
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # over the limit, chunked: no length given
    body, kind = _multipart(b"y" * (900 * 1024), "chunked.png")
    conn.request(
        "POST",
        "/",
        body=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
        headers={"Content-Type": kind},
        encode_chunked=True,
    )
    response = conn.getresponse()
    assert response.status == 413
    huge_png(tmp_path / "bomb.png")  # a few KB that would decode to 400 MP
    status, page = _post(port, (tmp_path / "bomb.png").read_bytes(), "bomb.png")
    assert status == 400 and "megapixels" in page
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/", body=b"not a form at all", headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert conn.getresponse().status == 400
    status, page = _post(port, b"\x00\x01 not a video", "clip.mp4")  # an error names the upload, not a temp path
    assert status == 400 and "clip.mp4" in page and str(app.state.results) not in page and "_input" not in page
    status, page = _post(port, _png(), "photo.png")
    assert status == 200 and 'id="overlay"' in page and 'id="legend"' in page
    assert _health(port) < 2


@pytest.mark.slow
def test_concurrent_uploads_and_a_slow_client_leave_the_server_answering(server) -> None:
    port, app = server
    slow = socket.create_connection(("127.0.0.1", port))  # sends half a request, then nothing
    slow.sendall(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=q\r\n"
        b"Content-Length: 100000\r\n\r\n--q\r\n"
    )
    image = _png((320, 240))
    with ThreadPoolExecutor(8) as pool:
        uploads = [pool.submit(_post, port, image, f"p{i}.png") for i in range(8)]
        waits = []
        while not all(u.done() for u in uploads):
            waits.append(_health(port))
            time.sleep(0.1)
        statuses = [u.result()[0] for u in uploads]
    slow.close()
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1, statuses  # bounded: the rest told to retry
    assert waits and max(waits) < 2, waits  # the event loop never waited on the model
    results = app.state.results
    assert results.exists()


@pytest.mark.slow
def test_results_go_when_the_server_stops(ckpt: Path) -> None:
    from webdino_seg import Predictor
    from webdino_seg.app.demo import create_app

    app = create_app(Predictor.from_checkpoint(ckpt, device="cpu"))
    with serving(app) as port:
        assert _post(port, _png(), "photo.png")[0] == 200 and any(app.state.results.iterdir())
    assert not app.state.results.exists()
