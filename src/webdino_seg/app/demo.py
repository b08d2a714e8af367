"""`webdino-seg demo`: a local web page to upload an image or a short video and see the segmentation.

A Starlette app served by uvicorn (the ``demo`` extra); it binds to 127.0.0.1 unless told otherwise
and fetches nothing from a network. Results (overlay, mask, video) are kept in a temporary folder
for the life of the server.
"""

from __future__ import annotations

import html
import io
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from ..data.images import ImageError, to_rgb
from ..inference.predictor import Predictor
from ..utils.files import save_png

VIDEO_TYPES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
MAX_VIDEO_FRAMES = 300


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


def create_app(predictor: Predictor, max_bytes: int = 20 * 2**20, workdir: str | Path | None = None):
    """The demo's ASGI app around `predictor`; uploads larger than `max_bytes` are refused."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, Response
    from starlette.routing import Route

    results = Path(workdir or tempfile.mkdtemp(prefix="webdino-seg-demo-"))
    results.mkdir(parents=True, exist_ok=True)
    limit_text = f"{max_bytes / 2**20:.0f} MB"

    async def index(request: Request) -> Response:
        if request.method == "GET":
            return HTMLResponse(_page(status=f"Upload an image or a short video (at most {limit_text})."))
        length = int(request.headers.get("content-length") or 0)
        if length > max_bytes:
            return HTMLResponse(_page(f'<p class="error">The file is too large ({length / 2**20:.1f} MB); the '
                                      f"limit is {limit_text}.</p>"), status_code=413)  # fmt: skip
        form = await request.form()
        upload = form.get("file")
        if upload is None or not getattr(upload, "filename", ""):
            return HTMLResponse(_page('<p class="error">No file was uploaded.</p>'), status_code=400)
        data = await upload.read()
        if len(data) > max_bytes:
            return HTMLResponse(_page(f'<p class="error">The file is too large; the limit is {limit_text}.</p>'),
                                status_code=413)  # fmt: skip
        suffix = Path(upload.filename).suffix.lower()
        try:
            if suffix in VIDEO_TYPES:
                body = _video(predictor, data, suffix, results)
            else:
                body = _image(predictor, data, upload.filename, results)
        except (ImageError, ValueError, OSError) as err:
            return HTMLResponse(_page(f'<p class="error">{html.escape(str(err))}</p>'), status_code=400)
        return HTMLResponse(_page(body))

    async def result(request: Request) -> Response:
        path = results / Path(request.path_params["name"]).name  # no way out of the folder
        if not path.is_file():
            return Response("not found", status_code=404)
        return FileResponse(path)

    return Starlette(routes=[Route("/", index, methods=["GET", "POST"]), Route("/results/{name}", result)])


def _image(predictor: Predictor, data: bytes, filename: str, results: Path) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        image = to_rgb(Image.open(io.BytesIO(data)))
    except (UnidentifiedImageError, OSError) as err:
        raise ImageError(f"{filename}: not an image this demo can read ({err})") from None
    start = time.perf_counter()
    mask = predictor.predict(image)
    seconds = time.perf_counter() - start
    key = uuid.uuid4().hex[:12]
    save_png(results / f"{key}_overlay.png", predictor.draw(image, mask))
    save_png(results / f"{key}_mask.png", mask)
    share = ", ".join(f"{name} {np.mean(mask == i) * 100:.1f}%" for i, name in enumerate(predictor.class_names))
    ids = ", ".join(f"{i} {name}" for i, name in enumerate(predictor.class_names))
    swatches = "".join(
        f'<span class="swatch"><i style="background: rgb{tuple(int(v) for v in predictor.colors[i])}"></i>'
        f"{html.escape(name)}</span>" for i, name in enumerate(predictor.class_names)
    )
    return (
        f'<div class="result"><p id="timing">{html.escape(filename)}: {image.shape[1]}x{image.shape[0]}, '
        f"segmented in {seconds * 1000:.0f} ms ({share})</p>"
        f'<p id="legend">{swatches}</p><img id="overlay" src="/results/{key}_overlay.png" alt="overlay">'
        f'<p><a id="mask" href="/results/{key}_mask.png" download="{html.escape(Path(filename).stem)}_mask.png">'
        f"download the mask</a> (PNG of class ids: {html.escape(ids)})</p></div>"
    )


def _video(predictor: Predictor, data: bytes, suffix: str, results: Path) -> str:
    from ..inference.video import run_video

    key = uuid.uuid4().hex[:12]
    src = results / f"{key}_input{suffix}"
    src.write_bytes(data)
    try:
        info = run_video(predictor, src, results / f"{key}_seg.mp4", max_frames=MAX_VIDEO_FRAMES, progress=False)
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
    """Run the demo until Ctrl-C."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError("the demo needs the demo extra: pip install 'webdino-seg[demo]'") from None
    app = create_app(predictor, int(max_mb * 2**20))
    print(f"webdino-seg demo on http://{host}:{port}/ (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
