"""Shared test fixtures: the golden tiny-model files, a small Penn-Fudan release made of files in this repository,
and (for the few tests marked `fulldata`) the full datasets in ../shared/data."""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "pennfudan-sample"
CLIP = REPO / "examples" / "people_walking_clip.mp4"
SHARED_DATA = Path(os.environ.get("WEBDINO_SEG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4}

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` are skipped where no CUDA GPU is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        if os.environ.get("WEBDINO_SEG_REQUIRE_DATA") == "1":
            pytest.fail(f"{path} is required under CI (WEBDINO_SEG_REQUIRE_DATA=1) but is missing")
        pytest.skip(f"{path} not present (the full dataset lives in ../shared/data)")
    return path


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's last line says what was skipped for want of data or a GPU, and how to run it."""
    terminalreporter = config.pluginmanager.get_plugin("terminalreporter")
    if terminalreporter is None:
        return
    skipped = terminalreporter.stats.get("skipped", [])
    data = sum("../shared/data" in str(r.longrepr) for r in skipped)
    gpu = sum("CUDA GPU" in str(r.longrepr) for r in skipped)
    if data:
        terminalreporter.write_line(
            f"{data} test(s) skipped: they need the full datasets (Penn-Fudan, CamVid); run them with "
            "WEBDINO_SEG_DATA=/path/to/data (holding PennFudanPed/ and camvid/) make test",
            yellow=True,
        )
    if gpu:
        terminalreporter.write_line(f"{gpu} test(s) skipped: they need a CUDA GPU (run pytest -m cuda on one)")


@pytest.fixture(scope="session")
def pennfudan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-image Penn-Fudan release in the original layout (PNGImages/, PedMasks/ instance masks), made from the
    bundled sample and tests/fixtures/pennfudan-mini: the images are the originals re-encoded as JPEG, here PNG
    again."""
    from PIL import Image

    root = tmp_path_factory.mktemp("release") / "PennFudanPed"
    (root / "PNGImages").mkdir(parents=True)
    masks = FIXTURES / "pennfudan-mini" / "PedMasks"
    shutil.copytree(masks, root / "PedMasks")
    images = [*SAMPLE.glob("*_images/*.jpg"), *(FIXTURES / "pennfudan-mini" / "images").glob("*.jpg")]
    for image in images:
        Image.open(image).save(root / "PNGImages" / f"{image.stem}.png")
    assert len(images) == len(list(masks.iterdir())) == 24
    return root


@pytest.fixture(scope="session")
def pennfudan_full() -> Path:
    """The full original Penn-Fudan release (170 images), from ../shared/data: for tests marked `fulldata`."""
    return _shared("PennFudanPed")


@pytest.fixture(scope="session")
def test_video() -> Path:
    """A real 768x432 H.264 clip (60 frames at 10 fps) cut from the test video; bundled with the examples."""
    return CLIP


@pytest.fixture(scope="session")
def camvid() -> Path:
    """CamVid as the SegNet tutorial publishes it (train/ + trainannot/, val/ + valannot/, 11 = ignore)."""
    return _shared("camvid")


@pytest.fixture(scope="session")
def tiny_io() -> dict:
    """Official reference inputs and outputs for the tiny model."""
    return torch.load(FIXTURES / "tiny_io.pt", weights_only=True)


@pytest.fixture(scope="session")
def prepared(pennfudan: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 24-image release prepared into the train/valid layout (seed 42, 18 train / 6 valid)."""
    from webdino_seg.data.pennfudan import prepare_pennfudan

    out = tmp_path_factory.mktemp("prepared") / "pennfudan"
    prepare_pennfudan(pennfudan, out, valid_count=6)
    return out


@pytest.fixture(scope="session")
def prepared_full(pennfudan_full: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full Penn-Fudan set prepared as the README does (seed 42, 146 train / 24 valid)."""
    from webdino_seg.data.pennfudan import prepare_pennfudan

    out = tmp_path_factory.mktemp("prepared-full") / "pennfudan"
    prepare_pennfudan(pennfudan_full, out)
    return out


def make_subset(prepared: Path, out: Path, n_train: int, n_valid: int) -> Path:
    """A small copy of the prepared set: the first images of each split."""
    import shutil

    for split, n in (("train", n_train), ("valid", n_valid)):
        for kind in ("images", "masks"):
            (out / f"{split}_{kind}").mkdir(parents=True)
        for image in sorted((prepared / f"{split}_images").iterdir())[:n]:
            shutil.copy(image, out / f"{split}_images" / image.name)
            shutil.copy(prepared / f"{split}_masks" / image.name, out / f"{split}_masks" / image.name)
    return out


@pytest.fixture(scope="session")
def small(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 train and 4 valid images of the prepared set (tests copy it before changing anything in it)."""
    return make_subset(prepared, tmp_path_factory.mktemp("small") / "data", 12, 4)


@pytest.fixture(scope="session")
def trained_run(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (short) training run of the tiny random backbone on the 24-image prepared set."""
    from webdino_seg import train

    cfg = tiny_config(
        prepared, tmp_path_factory.mktemp("runs") / "tiny", imgsz=(224, 224), epochs=6, batch=8, cache_views=2, seed=0
    )
    return train(cfg, log=lambda *_: None)


@pytest.fixture(scope="session")
def ckpt(trained_run: Path) -> Path:
    """The best-mIoU model of `trained_run`."""
    return trained_run / "best_model_iou.pth"


def tiny_settings(data: Path, out: Path, **overrides: object) -> dict:
    """The one tiny training run the tests build on: the tiny random backbone on a small dataset (112x112,
    4 epochs); `overrides` win. `tiny_config` and `tiny_train_cli` are this run as settings and as a command."""
    base = {
        "data": str(data),
        "out": str(out),
        "arch": "webdino-tiny",
        "weights": "random",
        "imgsz": (112, 112),
        "epochs": 4,
        "lr": 1e-3,
        "batch": 4,
        "workers": 0,
        "cache_views": 4,
        "seed": 3,
    }
    return base | overrides


def tiny_config(data: Path, out: Path, **overrides: object):
    """`tiny_settings` as a TrainConfig."""
    from webdino_seg import TrainConfig

    return TrainConfig(**tiny_settings(data, out, **overrides))


def tiny_train_cli(data: Path, out: Path, *extra: str, **overrides: object) -> list[str]:
    """`tiny_settings` as `webdino-seg train` arguments, at 56x56 for one epoch unless `overrides` say otherwise;
    `extra` flags come last (later flags win)."""
    settings = tiny_settings(data, out, **({"imgsz": (56, 56), "epochs": 1} | overrides))
    argv = ["train"]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if key in ("cache", "amp"):  # on by default; the command line turns them off
            argv += [] if value else [f"--no-{key}"]
        elif isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, *map(str, value if isinstance(value, (tuple, list)) else [value])]
    return [*argv, *extra]


def huge_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A PNG whose header claims width x height; decoding it would need gigabytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * (width * 3 + 1) * 4)  # only a few rows: never fully decodable
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def metrics_rows(run: Path, timings: bool = True) -> list[dict]:
    """metrics.csv of a run folder as dicts; `timings=False` drops the wall-clock column."""
    with open(Path(run) / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if timings or k != "seconds"} for row in csv.DictReader(f)]


def assert_same_metrics(a: list[dict], b: list[dict], rel: float = 1e-5) -> None:
    """Two runs' metrics rows agree (timings aside) to `rel`: 2-thread CPU kernels vary in the last float bits."""
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            if key != "seconds":
                assert float(row_a[key]) == pytest.approx(float(row_b[key]), rel=rel, abs=1e-7), (key, row_a, row_b)


def assert_bf16_close(device: str = "cpu", batch: int = 2) -> None:
    """The tiny fixture backbone in bf16 against fp32 on `device`: cosine >= 0.999 per token, mean abs difference
    under 0.02 and max under 5% of the largest value (measured on the CPU: 0.99996, 0.004, 1.2%)."""
    from webdino_seg import create_backbone

    model = create_backbone("webdino-300m", weights=FIXTURES / "tiny_official.pth", **TINY).eval().to(device)
    x = torch.randn(batch, 3, 224, 280, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        fp32 = model.forward_features(x)["x_norm_patchtokens"]
        model.to(torch.bfloat16)
        bf16 = model.forward_features(x.bfloat16())["x_norm_patchtokens"].float()
    cosine = F.cosine_similarity(fp32.flatten(0, 1), bf16.flatten(0, 1), dim=-1)
    diff = (fp32 - bf16).abs()
    print(f"bf16 vs fp32 on {device}: min cosine {cosine.min():.6f}, mean abs {diff.mean():.4g}, max {diff.max():.4g}")
    assert cosine.min() >= 0.999 and diff.mean() < 0.02 and diff.max() < 0.05 * fp32.abs().max()


def reference_mask(model: torch.nn.Module, meta: dict, image: np.ndarray) -> np.ndarray:
    """Class ids for an RGB image computed here, independently of the Predictor: OpenCV resize and
    normalisation in NumPy, the model's token-grid logits upsampled with OpenCV to the image size."""
    import cv2

    h, w = meta["imgsz"]
    x = cv2.resize(image.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_LINEAR)
    x = (x - np.array(meta["mean"], np.float32)) / np.array(meta["std"], np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(2, 0, 1)[None].float())[0].numpy()
    up = np.stack([cv2.resize(c, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR) for c in logits])
    return up.argmax(0).astype(np.uint8)


def cli_error(argv: list[str], capsys: pytest.CaptureFixture, *needles: str) -> str:
    """Run the CLI, expect exit code 2 and one error line (no traceback) holding every needle; return it."""
    from webdino_seg.app.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1].split("\r")[-1]  # progress bars may come before it
    assert last.startswith(f"webdino-seg {argv[0]}: error: "), err
    for needle in needles:
        assert needle in last, err
    return last


@contextlib.contextmanager
def serving(app, **config: object):
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port in a thread; yields the port, stops it after."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=20)


class Evil:
    """Unpickling this would run a shell command that creates the file PWNED in the current folder."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files (a folder's index.html for the folder); honours `Range: bytes=N-`; can be told to cut a response
    short."""

    cut_after: int | None = None

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.is_dir():  # a folder is served as its index.html, as package indexes are
            path = path / "index.html"
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        body = data[start:]
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None and not rng:
            body = body[: type(self).cut_after]
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path):
    """An HTTP server on 127.0.0.1 serving tmp_path/srv; yields (base URL, handler class)."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = type("H", (_RangeHandler,), {"cut_after": None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", handler
    httpd.shutdown()
