"""`webdino-seg demo`: a local web page to upload an image or a short video and see the segmentation.

A Starlette app served by uvicorn (the ``demo`` extra); it binds to 127.0.0.1 unless told otherwise
and fetches nothing from a network. Results (overlay, mask, video) are kept in a temporary folder
for the life of the server.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

from ..data.images import MAX_PIXELS, ImageError, to_rgb
from ..inference.predictor import Predictor
from ..utils.files import save_png
from ..utils.safetext import escape

VIDEO_TYPES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
MAX_VIDEO_FRAMES = 300
BODY_TIMEOUT = 30.0  # seconds a request may go without sending any of the body it declared
# every response: nothing but this server's own files, no script at all, no framing, no sniffing
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; img-src 'self' data:; media-src 'self'; "
    "style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",  # data: the icon
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _page(body: str = "", status: str = "") -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>webdino-seg demo</title><link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }}
.result img, .result video {{ max-width: 100%; border: 1px solid #ccc; }}
.error {{ color: #b00020; font-weight: bold; }}
.swatch {{ margin-right: 1em; }} .swatch i {{ display: inline-block; width: 1em; height: 1em; margin-right: 0.3em;
  vertical-align: middle; border: 1px solid #333; }}
</style></head><body>
<h1>webdino-seg demo</h1>
<form method="post" action="/" enctype="multipart/form-data">
<input id="file" type="file" name="file" accept="image/*,video/*" required>
<button id="run" type="submit">Segment</button>
</form>
<p id="status">{status}</p>
{body}
</body></html>"""


class _TooLarge(Exception):
    """The request body grew past the upload limit while it was being read."""


class _TooSlow(Exception):
    """The client stopped sending the body it declared."""


def _limited(receive, max_bytes: int, timeout: float = BODY_TIMEOUT):
    """An ASGI receive that counts the body as it arrives and stops past `max_bytes`, however it is sent
    (with a Content-Length or chunked): nothing larger is ever held in memory; a client that sends nothing for
    `timeout` seconds is cut off."""
    seen = 0

    async def limited() -> dict:
        nonlocal seen
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except asyncio.TimeoutError:
            raise _TooSlow from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise _TooLarge
        return message

    return limited


class _Demo:
    """The demo's request handlers and what they share: the model (one upload at a time), the limits, the
    results folder."""

    def __init__(
        self, predictor: Predictor, max_bytes: int, results: Path, max_waiting: int, body_timeout: float = BODY_TIMEOUT
    ) -> None:
        self.predictor, self.max_bytes, self.results, self.max_waiting = predictor, max_bytes, results, max_waiting
        self.body_timeout = body_timeout
        self.limit_text = f"{max_bytes / 2**20:.0f} MB"
        self.model_lock, self.waiting = asyncio.Lock(), 0

    @staticmethod
    def error(text: str, code: int):
        from starlette.responses import HTMLResponse

        return HTMLResponse(_page(f'<p class="error">{escape(text)}</p>'), status_code=code)

    async def read_upload(self, request) -> tuple[bytes, str] | object:
        """The uploaded file's bytes and name, or the error response to send."""
        from starlette.requests import Request

        too_large = f"The file is too large; the limit is {self.limit_text}."
        if int(request.headers.get("content-length") or 0) > self.max_bytes:
            return self.error(too_large, 413)
        try:
            limited = Request(request.scope, _limited(request.receive, self.max_bytes, self.body_timeout))
            form = await limited.form(max_files=1, max_fields=4)
        except _TooLarge:
            return self.error(too_large, 413)
        except _TooSlow:
            return self.error(f"The upload stalled: nothing arrived for {self.body_timeout:g} s.", 408)
        except Exception:  # a body that is not multipart form data
            return self.error("The upload could not be read as a form with a file.", 400)
        file = form.get("file")
        if file is None or not getattr(file, "filename", ""):
            return self.error("No file was uploaded.", 400)
        return await file.read(), Path(file.filename).name

    async def index(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import HTMLResponse

        if request.method in ("GET", "HEAD"):  # HEAD: the same headers, no body (Starlette drops it)
            return HTMLResponse(_page(status=f"Upload an image or a short video (at most {self.limit_text})."))
        upload = await self.read_upload(request)
        if not isinstance(upload, tuple):
            return upload
        if self.waiting >= self.max_waiting:
            return self.error("The demo is busy with other uploads; try again in a moment.", 503)
        self.waiting += 1
        try:
            async with self.model_lock:  # one at a time: the model's memory is bounded
                body = await run_in_threadpool(_segment, self.predictor, *upload, self.results)
        except (ImageError, ValueError, OSError) as err:
            return self.error(str(err).replace(str(self.results), "results"), 400)
        finally:
            self.waiting -= 1
        return HTMLResponse(_page(body))

    async def result(self, request):
        from starlette.responses import FileResponse, Response

        path = self.results / Path(request.path_params["name"]).name  # no way out of the folder
        if not path.is_file():
            return Response("not found", status_code=404)
        return FileResponse(path)

    async def health(self, _request):
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("ok")


def create_app(
    predictor: Predictor,
    max_bytes: int = 20 * 2**20,
    workdir: str | Path | None = None,
    max_waiting: int = 4,
    *,
    body_timeout: float = BODY_TIMEOUT,
):
    """The demo's ASGI app around `predictor`: uploads over `max_bytes` (or `MAX_PIXELS` once decoded) are refused,
    one upload is segmented at a time off the event loop (other requests, /health among them, are served
    meanwhile), at most `max_waiting` more wait (the rest get 503), and the results folder is removed at
    shutdown unless it is the given `workdir`. A client that stops sending its upload for `body_timeout` seconds
    gets 408; every response carries `SECURITY_HEADERS` (a Content-Security-Policy that allows no script)."""
    import contextlib
    import shutil

    from starlette.applications import Starlette
    from starlette.routing import Route

    results = Path(workdir or tempfile.mkdtemp(prefix="webdino-seg-demo-"))
    results.mkdir(parents=True, exist_ok=True)
    demo = _Demo(predictor, max_bytes, results, max_waiting, body_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):
        yield
        if workdir is None:  # the uploads and results go with the server
            shutil.rmtree(results, ignore_errors=True)

    routes = [
        Route("/", demo.index, methods=["GET", "POST"]),
        Route("/results/{name}", demo.result),
        Route("/health", demo.health),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[_security_headers()])
    app.state.results = results
    return app


def _security_headers():
    """Middleware adding `SECURITY_HEADERS` to every response."""
    from starlette.middleware import Middleware

    class Headers:
        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            async def send_with_headers(message: dict) -> None:
                if message["type"] == "http.response.start":
                    extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                    message = message | {"headers": [*message.get("headers", []), *extra]}
                await send(message)

            await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)

    return Middleware(Headers)


def _segment(predictor: Predictor, data: bytes, name: str, results: Path) -> str:
    """The result's HTML for one upload (a video by its suffix, else an image)."""
    suffix = Path(name).suffix.lower()
    if suffix in VIDEO_TYPES:
        return _video(predictor, data, suffix, results, name)
    return _image(predictor, data, name, results)


def _image(predictor: Predictor, data: bytes, filename: str, results: Path) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:  # checked on the header, before anything is decoded
                raise ImageError(
                    f"{filename}: {img.width}x{img.height} is more than the {MAX_PIXELS // 10**6} "
                    "megapixels this demo decodes"
                )
            image = to_rgb(img)
    except Image.DecompressionBombError:  # Pillow's own check, on the header, past 2x its pixel limit
        raise ImageError(f"{filename}: more megapixels than this demo decodes") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ImageError(f"{filename}: not an image this demo can read ({type(err).__name__})") from None
    start = time.perf_counter()
    mask = predictor.predict(image)
    seconds = time.perf_counter() - start
    key = uuid.uuid4().hex[:12]
    save_png(results / f"{key}_overlay.png", predictor.draw(image, mask))
    save_png(results / f"{key}_mask.png", mask)
    share = ", ".join(f"{escape(name)} {np.mean(mask == i) * 100:.1f}%" for i, name in enumerate(predictor.class_names))
    ids = ", ".join(f"{i} {name}" for i, name in enumerate(predictor.class_names))
    swatches = "".join(
        f'<span class="swatch"><i style="background: rgb{tuple(int(v) for v in predictor.colors[i])}"></i>'
        f"{escape(name)}{' (not drawn)' if not predictor.colors[i].any() else ''}</span>"
        for i, name in enumerate(predictor.class_names)
    )
    return (
        f'<div class="result"><p id="timing">{escape(filename)}: {image.shape[1]}x{image.shape[0]}, '
        f"segmented in {seconds * 1000:.0f} ms ({share})</p>"
        f'<p id="legend">{swatches}</p><img id="overlay" src="/results/{key}_overlay.png" alt="overlay">'
        f'<p><a id="mask" href="/results/{key}_mask.png" download="{escape(Path(filename).stem + "_mask.png")}">'
        f"download the mask</a> (PNG of class ids: {escape(ids)})</p></div>"
    )


def _video(predictor: Predictor, data: bytes, suffix: str, results: Path, name: str) -> str:
    from ..inference.video import run_video

    key = uuid.uuid4().hex[:12]
    src = results / f"{key}_input{suffix}"
    src.write_bytes(data)
    try:
        info = run_video(predictor, src, results / f"{key}_seg.mp4", max_frames=MAX_VIDEO_FRAMES, progress=False)
    except (ValueError, OSError) as err:  # name the upload, not the temporary file it was saved as
        raise type(err)(str(err).replace(str(src), name)) from None
    finally:
        src.unlink(missing_ok=True)
    cut = f" (the first {MAX_VIDEO_FRAMES})" if info["frames"] == MAX_VIDEO_FRAMES else ""
    return (
        f'<div class="result"><p id="timing">{info["frames"]} frames{cut}, {info["width"]}x{info["height"]}, '
        f"segmented in {info['seconds']:.1f} s ({info['fps']:.1f} FPS end to end)</p>"
        f'<video id="video" controls src="/results/{key}_seg.mp4"></video>'
        f'<p><a id="download" href="/results/{key}_seg.mp4" download>download the video</a></p></div>'
    )


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 7860, max_mb: float = 20) -> None:
    """Run the demo until Ctrl-C (or SIGTERM); its uploads and results are removed when it stops."""
    import shutil

    try:
        import uvicorn
    except ImportError:
        raise ImportError("the demo needs the demo extra: pip install 'webdino-seg[demo]'") from None
    app = create_app(predictor, int(max_mb * 2**20))
    print(f"webdino-seg demo on http://{host}:{port}/ (Ctrl-C stops it)")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5)
    finally:
        shutil.rmtree(app.state.results, ignore_errors=True)
