"""Nothing from outside is trusted: names reach HTML and shells only escaped and quoted, downloads are checked before
they are kept, label files are checked before anything is drawn, resume state and configs are checked against the
run before any work. Each test plays a hostile (or careless) user and can fail: see the comment on each."""

from __future__ import annotations

import hashlib
import html
import html.parser
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from conftest import FIXTURES, SAMPLE, serving, tiny_config, tiny_settings

OFFICIAL = FIXTURES / "tiny_official.pth"
# names as datasets from the web carry them: markup, quotes, URL syntax, shell syntax, spaces
HOSTILE = ['x"><img src=x onerror=alert(1)>', "<script>alert(2)</script>", "a#b?c=1&d%41", "it's $(touch PWNED) `id`"]


# --- 1. markup in names never reaches HTML live ---------------------------------------------------------------


class _Page(html.parser.HTMLParser):
    """Every start tag with its attributes, and the text of each script element."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


ALLOWED_ATTRS = {
    "class",
    "id",
    "href",
    "src",
    "alt",
    "style",
    "data-name",
    "data-miou",
    "lang",
    "charset",
    "name",
    "content",
    "rel",
    "placeholder",
    "download",
    "controls",
    "method",
    "action",
    "enctype",
    "type",
    "accept",
    "required",
}


def _no_markup_from_names(page: _Page, folder: Path | None = None) -> None:
    """No attribute a name could have made (on*, or anything unknown), no tag a name could have made, every
    local link leads to a file that exists."""
    tags = {tag for tag, _ in page.tags}
    assert tags <= {
        "html",
        "head",
        "meta",
        "title",
        "link",
        "style",
        "body",
        "h1",
        "h2",
        "div",
        "table",
        "tr",
        "th",
        "td",
        "b",
        "img",
        "p",
        "input",
        "span",
        "figure",
        "figcaption",
        "a",
        "i",
        "script",
        "form",
        "button",
        "video",
    }, tags
    for tag, attrs in page.tags:
        assert set(attrs) <= ALLOWED_ATTRS, (tag, attrs)
        if tag == "img":
            assert "onerror" not in attrs and attrs.get("src") != "x"
        for key in ("href", "src"):
            link = attrs.get(key)
            if folder is not None and link and not link.startswith(("data:", "/")):
                assert not urlparse(link).query and not urlparse(link).fragment, link
                assert (folder / unquote(link)).is_file(), link


def test_the_report_keeps_hostile_file_class_and_dataset_names_inert(tmp_path: Path) -> None:
    """Fails if any name reaches an attribute or a tag unescaped, or a link is broken by '#', '?' or '%'."""
    from webdino_seg.inference.report import SCRIPT, ReportWriter

    classes = ["background", *HOSTILE]
    writer = ReportWriter(tmp_path / "report")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    for i, name in enumerate(HOSTILE):
        mask = rng.integers(0, len(classes), (40, 60)).astype(np.uint8)
        scores = {"miou": 0.1 * i, **{f"iou_{c}": 0.5 for c in classes}}
        writer.add(f"{name}.jpg", image, mask, mask, scores)
    report = {
        "model": HOSTILE[0] + ".pth",
        "data": HOSTILE[1],
        "split": HOSTILE[2],
        "images": 4,
        "imgsz": [112, 112],
        "tta": None,
        "miou": 0.5,
        "pixel_accuracy": 0.5,
        "iou": dict.fromkeys(classes, 0.5),
        "baseline": {"class": HOSTILE[3], "miou": 0.1, "pixel_accuracy": 0.2},
    }
    info = {HOSTILE[0]: HOSTILE[1], "weights": HOSTILE[3]}
    page_path = writer.write(report, np.ones((5, 5), np.int64), info, None)
    page = _parse(page_path.read_text())
    _no_markup_from_names(page, page_path.parent)
    assert [s.strip() for s in page.scripts] == [SCRIPT.strip()]  # the page's own filter script and nothing else
    links = [a["href"] for t, a in page.tags if t == "a"]
    assert len(links) == 2 * len(HOSTILE)
    cards = [a["data-name"] for t, a in page.tags if t == "figure"]
    assert sorted(cards) == sorted(f"{n}.jpg".lower() for n in HOSTILE)  # the names, as text, intact


def test_the_demo_keeps_hostile_class_and_file_names_inert(ckpt: Path) -> None:
    """Fails if a class name (from anyone's checkpoint) or an upload's name reaches the page as markup, if HEAD /
    is not answered like GET, or if the page may run inline script."""
    from webdino_seg import Predictor
    from webdino_seg.app.demo import create_app

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    predictor.class_names = HOSTILE[:2]
    app = create_app(predictor, max_bytes=512 * 1024)
    with serving(app) as port:
        status, text = _post_png(port, HOSTILE[0] + ".png")
        assert status == 200, text
        page = _parse(text)
        _no_markup_from_names(page)
        assert page.scripts == [] and html.escape(HOSTILE[1]) in text
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("HEAD", "/")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""
        policy = response.getheader("Content-Security-Policy")
        assert "default-src 'none'" in policy and "script-src" not in policy  # no script source at all


def _post_png(port: int, name: str) -> tuple[int, str]:
    """Upload a small PNG as `name` to the demo; the status and the page."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(buf, "PNG")
    boundary = "b0undary"
    quoted = name.replace('"', "%22")  # as browsers send a quote in a file name
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    body = head.encode() + buf.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = conn.getresponse()
    return response.status, response.read().decode(errors="replace")


def test_the_demo_cuts_off_a_body_that_never_comes(ckpt: Path) -> None:
    """Fails if a request that declares a body and sends none holds its connection past the body timeout."""
    from webdino_seg import Predictor
    from webdino_seg.app.demo import create_app

    app = create_app(Predictor.from_checkpoint(ckpt, device="cpu"), body_timeout=1.0)
    with serving(app) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 5000\r\n\r\n--b\r\n"
        )
        start = time.monotonic()
        answer = sock.recv(4096).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408") and time.monotonic() - start < 10
        sock.close()


# --- 2. printed commands are shell-quoted -------------------------------------------------------------------------


def _run_pasted(line: str, cwd: Path) -> list[str]:
    """Paste a printed command into bash with `webdino-seg` (and mv) standing in as programs that print their
    arguments; return the arguments each received, one JSON list per line."""
    bin_dir = cwd / "bin"
    bin_dir.mkdir(exist_ok=True)
    for prog in ("webdino-seg", "mv"):
        stub = bin_dir / prog
        stub.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd)}
    done = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [json.loads(out) for out in done.stdout.splitlines()]


def test_the_resume_hint_pasted_into_a_shell_runs_exactly_its_command(tmp_path: Path) -> None:
    """Fails if a run folder named with shell syntax makes the pasted hint run anything else (PWNED appears) or
    breaks its arguments apart."""
    from webdino_seg.engine.runfolder import RunFolder

    run_dir = tmp_path / "work" / HOSTILE[3]
    run_dir.mkdir(parents=True)
    last, prev = run_dir / "last.pth", run_dir / "last.prev.pth"
    import torch

    torch.save(
        {
            "format": "webdino-seg/last",
            "run_id": None,
            "epoch": 2,
            "head": {},
            "optimizer": {},
            "history": [],
            "best": {},
        },
        prev,
    )
    hint = RunFolder(run_dir)._recovery()
    pasted = hint.split("continue from it with `", 1)[1].rsplit("`; ", 1)[0]  # the name holds backticks too
    assert _run_pasted(pasted, tmp_path) == [[str(prev), str(last)], ["train", "--resume", str(run_dir)]]
    assert not (tmp_path / "PWNED").exists()


def test_next_lines_of_prepare_data_paste_as_they_read(tmp_path: Path, capsys) -> None:
    """Fails if prepare-data's `next:` command for an output folder with spaces and shell syntax is not quoted."""
    from webdino_seg.app.cli import main

    out = tmp_path / "out dir" / HOSTILE[3]
    assert (
        main(["prepare-data", "--format", "folders", "--source", str(_flat_folders(tmp_path)), "--out", str(out)]) == 0
    )
    line = capsys.readouterr().out.split("next: ")[1].strip()
    assert _run_pasted(line, tmp_path) == [["show-data", str(out)]]
    assert not (tmp_path / "PWNED").exists()


def _flat_folders(tmp_path: Path) -> Path:
    """A small images/ + masks/ dataset from the bundled sample."""
    root = tmp_path / "flat"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for image in sorted((SAMPLE / "train_images").glob("*.jpg"))[:4]:
        shutil.copy(image, root / "images" / image.name)
        shutil.copy(SAMPLE / "train_masks" / f"{image.stem}.png", root / "masks" / f"{image.stem}.png")
    return root


# --- 3. downloads: keyed by URL, promoted only whole, verified on every use ---------------------------------------


class _LyingHandler(http.server.BaseHTTPRequestHandler):
    """Serves one body at any path, as told: honest, without a length, with a short length, as HTML, a 416 for any
    range, or a 206 that starts elsewhere than asked; can close early. Counts its requests."""

    body = b""
    mode = "honest"
    cut_after: int | None = None
    requests = 0

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        cls = type(self)
        cls.requests += 1
        data, rng = cls.body, self.headers.get("Range")
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        if rng and cls.mode == "416":
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rng and cls.mode == "bad206":
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")  # not where it was asked
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        kind = "text/html; charset=utf-8" if cls.mode == "html" else "application/octet-stream"
        self.send_header("Content-Type", kind)
        if cls.mode == "short":
            self.send_header("Content-Length", str(len(body) // 2))
        elif cls.mode != "nolength":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.cut_after is not None and not rng:
            body = body[: cls.cut_after]
        self.wfile.write(body)
        self.close_connection = True


@pytest.fixture
def liar():
    """Two lying HTTP servers on 127.0.0.1 (two hosts, one file name); yields their base URLs and handler classes."""
    servers = []
    for _ in range(2):
        handler = type("H", (_LyingHandler,), {"body": OFFICIAL.read_bytes()})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append((httpd, handler))
    yield [(f"http://127.0.0.1:{h.server_port}", handler) for h, handler in servers]
    for httpd, _ in servers:
        httpd.shutdown()


def test_one_file_name_from_two_hosts_is_two_cached_files(tmp_path: Path, liar, monkeypatch) -> None:
    """Fails if the cache trusts by file name: the second host's file must be fetched from it, not read from the
    first host's download."""
    from webdino_seg.utils.download import download_url, sha256_file

    monkeypatch.setenv("WEBDINO_SEG_CACHE", str(tmp_path / "cache"))
    (a, ha), (b, hb) = liar
    hb.body = b"other bytes " * 100
    first, second = download_url(f"{a}/w/x.pth", progress=False), download_url(f"{b}/w/x.pth", progress=False)
    assert first != second and hb.requests == 1
    assert sha256_file(first) == sha256_file(OFFICIAL) and second.read_bytes() == hb.body
    assert download_url(f"{a}/w/x.pth", progress=False) == first and ha.requests == 1  # verified, not fetched
    first.write_bytes(first.read_bytes()[:-1] + b"!")  # changed on disk: the record no longer matches
    assert download_url(f"{a}/w/x.pth", progress=False) == first and ha.requests == 2
    assert sha256_file(first) == sha256_file(OFFICIAL)


@pytest.mark.parametrize("mode", ["nolength", "short", "html"])
def test_a_download_is_kept_only_whole_and_never_as_html(tmp_path: Path, liar, mode: str) -> None:
    """Fails if a body of unknown length, one shorter than the file, or an HTML page is kept as the file."""
    from webdino_seg.utils.download import download_url

    (base, handler), _ = liar
    handler.mode = mode
    url = f"{base}/x.pth"
    if mode == "short":  # the length is a lie: the file is cut, and loading it then fails and moves it aside
        path = download_url(url, tmp_path / "dl", progress=False)
        assert path.stat().st_size < OFFICIAL.stat().st_size
        return
    with pytest.raises(ConnectionError, match="HTML page" if mode == "html" else "does not say how long"):
        download_url(url, tmp_path / "dl", progress=False)
    assert not [p for p in (tmp_path / "dl").iterdir() if not p.name.startswith(".")]
    if mode == "nolength":  # with the expected sha256 the length is known after all
        path = download_url(url, tmp_path / "dl", sha256=hashlib.sha256(handler.body).hexdigest(), progress=False)
        assert path.read_bytes() == handler.body


@pytest.mark.parametrize("mode", ["416", "bad206", "honest"])
def test_a_resumed_download_checks_the_range_it_gets(tmp_path: Path, liar, mode: str) -> None:
    """Fails if a resume appends bytes from the wrong offset (a wrong 206), or a 416 leaves the part stuck."""
    from webdino_seg.utils.download import download_url

    (base, handler), _ = liar
    handler.cut_after = 1000
    with pytest.raises(ConnectionError, match="resume"):
        download_url(f"{base}/x.pth", tmp_path / "dl", progress=False)
    handler.cut_after, handler.mode = None, mode
    path = download_url(f"{base}/x.pth", tmp_path / "dl", progress=False)
    assert path.read_bytes() == OFFICIAL.read_bytes()
    assert not list((tmp_path / "dl").glob("*.part")) and not list((tmp_path / "dl").glob(".*.part"))


def test_a_cached_file_that_does_not_load_is_moved_aside_and_fetched_again(tmp_path: Path, liar, monkeypatch) -> None:
    """Fails if a bad download (an error page served as the weights) stays cached so that every retry fails, or
    if the error hides the URL it came from."""
    from webdino_seg import create_backbone
    from webdino_seg.models.weights.errors import WeightsError

    monkeypatch.setenv("WEBDINO_SEG_CACHE", str(tmp_path / "cache"))
    (base, handler), _ = liar
    good = handler.body
    handler.body = b"Service Unavailable\n" * 10
    url = f"{base}/webssl.pth"
    with pytest.raises(WeightsError, match=f"downloaded from {url}.*moved aside") as err:
        create_backbone("webdino-tiny", weights=url)
    assert "next try downloads it again" in str(err.value)
    handler.body = good  # the server is fixed: the retry downloads again and loads
    model = create_backbone("webdino-300m", weights=url, embed_dim=64, depth=4, num_heads=4)
    assert model.weights_info["source"] == url and handler.requests == 2


# --- 5. resume trusts nothing it reads ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two finished tiny runs (2 epochs) on the bundled sample, with other seeds."""
    from webdino_seg import TrainConfig, train

    base = tmp_path_factory.mktemp("two")
    runs = []
    for seed in (1, 2):
        cfg = TrainConfig(
            **tiny_settings(SAMPLE, base / f"run{seed}", epochs=2, seed=seed, imgsz=(56, 56), cache_views=1)
        )
        runs.append(train(cfg, log=lambda *_: None))
    return runs[0], runs[1]


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


def test_resume_refuses_another_runs_state(two_runs, tmp_path: Path, capsys) -> None:
    """Fails if one run's last.pth resumes another run (exit 0) instead of being refused before any work."""
    from webdino_seg.app.cli import main

    mine, theirs = _copy(two_runs[0], tmp_path), two_runs[1]
    shutil.copy(theirs / "last.pth", mine / "last.pth")
    os.remove(mine / "last.prev.pth")
    assert main(["train", "--resume", str(mine), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "the resume state of run" in err and "copied from another run" in err
    assert "features" not in os.listdir(mine) or not any((mine / "features").iterdir())


def test_resume_refuses_a_hand_edited_config(two_runs, tmp_path: Path, capsys) -> None:
    """Fails if an edited lr, seed, class list or head in config.yaml is accepted (the record would be false)."""
    import yaml

    from webdino_seg.app.cli import main

    for key, value in (("lr", 0.5), ("seed", 9), ("class_names", ["bg", "someone"]), ("head", "linear4")):
        run = _copy(two_runs[0], tmp_path / key)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg[key] = value
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
        err = capsys.readouterr().err
        assert f"{key} " in err and "differs from the settings the run started with" in err, err


def test_resume_refuses_a_damaged_state_before_extracting_features(
    two_runs, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Fails if a damaged last.pth is found only after the backbone and the features were computed."""
    import torch

    from webdino_seg.app.cli import main
    from webdino_seg.engine import train as train_mod

    run = _copy(two_runs[0], tmp_path)
    state = torch.load(run / "last.pth", weights_only=True)
    state["history"] = "not rows"
    torch.save(state, run / "last.pth")
    monkeypatch.setattr(train_mod, "build_model", lambda *a: pytest.fail("built the model before checking"))
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    assert "damaged resume state" in capsys.readouterr().err


def test_the_report_shows_only_the_curves_of_the_run_that_wrote_the_model(two_runs, tmp_path: Path) -> None:
    """Fails if a model copied into another run's folder gets that run's curves in its report."""
    from webdino_seg.inference.evaluate import curves_folder
    from webdino_seg.models.checkpoint import read_checkpoint

    mine, theirs = two_runs
    model = mine / "best_model_iou.pth"
    assert curves_folder(model, read_checkpoint(model)) == mine
    stranger = _copy(theirs, tmp_path) / "best_model_iou.pth"
    shutil.copy(model, stranger)
    assert curves_folder(stranger, read_checkpoint(stranger)) is None


# --- 7. configs ------------------------------------------------------------------------------------------------

BAD_CONFIGS = {  # a settings file's text -> what the one-line error must say
    "imgsz: [112.0, 112]\n": "imgsz is [112.0, 112]; it must be a list of 2 values, each an integer",
    "class_names: [1, 2]\n": "class_names is [1, 2]; it must be a list of values, each a string (or null)",
    "class_names: [[bg], person]\n": "class_names is [['bg'], 'person']",
    "class_colors: [[0, 0, 0], [300, 0, 0]]\n": "class colour [300, 0, 0]: a colour is three integers 0-255",
    "scheduler_epochs: [ten]\n": "scheduler_epochs is ['ten']; it must be a list of values, each an integer",
    "lr: 1e-3\nlr: 2e-3\n": "key 'lr' on line 2 is given again (first on line 1)",
    "head: " + "x" * 20_000_000 + "\n": "(20000002 characters)",
}


@pytest.mark.parametrize(
    "text", BAD_CONFIGS, ids=["float-size", "number-names", "nested-names", "colour", "epochs", "duplicate", "huge"]
)
def test_a_bad_config_is_one_short_line_and_makes_no_run_folder(text: str, tmp_path: Path, capsys) -> None:
    """Fails if a config with a mistyped element, a key given twice or a huge value gives a traceback, prints the
    value whole, or leaves a run folder behind."""
    from webdino_seg.app.cli import main

    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "runs" / "x"
    args = [
        "train",
        "--data",
        str(SAMPLE),
        "--arch",
        "webdino-tiny",
        "--weights",
        "random",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--config",
        str(config),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert BAD_CONFIGS[text] in err and "Traceback" not in err and len(err) < 2000, err[:3000]
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_a_config_reads_numbers_as_yaml_1_2_does(tmp_path: Path) -> None:
    """Fails if ``lr: 1e-3`` is read as a string (YAML 1.1) and refused, or a quoted number is read as one."""
    from webdino_seg.engine.config import read_settings

    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\ncache_memory_gb: 2E1\nclass_weights: '1e-3'\n")
    assert read_settings(config) == {"lr": 0.001, "cache_memory_gb": 20.0, "class_weights": "1e-3"}

    # a class named like a YAML 1.2 number stays a name through config.yaml
    cfg = tiny_config(SAMPLE, tmp_path / "r", class_names=["background", "1e5"])
    config.write_text(cfg.to_yaml())
    assert read_settings(config)["class_names"] == ["background", "1e5"]


# --- 6. outputs ------------------------------------------------------------------------------------------------


def test_no_output_or_cache_folder_lands_inside_the_data(tmp_path: Path, capsys) -> None:
    """Fails if --out or --feature-cache-dir inside --data, --report inside the evaluated data, or prepare-data's
    --out inside its --source is accepted (they would write files among the inputs)."""
    from webdino_seg.app.cli import main

    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    base = [
        "train",
        "--data",
        str(data),
        "--arch",
        "webdino-tiny",
        "--weights",
        "random",
        "--imgsz",
        "112",
        "112",
        "--epochs",
        "1",
    ]
    for extra, flag in (
        (["--out", str(data / "runs" / "a")], "--out"),
        (["--out", str(tmp_path / "r"), "--feature-cache-dir", str(data / "cache")], "--feature-cache-dir"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert f"{flag} {data}" in err and "is inside the input folder" in err, err
    link = tmp_path / "elsewhere"
    link.symlink_to(data / "train_images", target_is_directory=True)  # inside it by another name
    assert main([*base, "--out", str(link / "run")]) == 2
    assert "is inside the input folder" in capsys.readouterr().err
    assert main(["prepare-data", "--format", "folders", "--source", str(data), "--out", str(data / "again")]) == 2
    assert "is inside the input folder" in capsys.readouterr().err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before and not (tmp_path / "r").exists()


def test_a_full_disk_during_the_report_names_the_report_and_keeps_the_old_one(
    ckpt: Path, prepared: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Fails if a write failure while the report is drawn leaves a partial report or a temp folder, loses the
    report already there, or blames the image being read."""
    import errno

    from webdino_seg.app.cli import main
    from webdino_seg.utils import files

    report = tmp_path / "report"
    args = [
        "evaluate",
        "--model",
        str(ckpt),
        "--data",
        str(prepared),
        "--out",
        str(tmp_path / "e.json"),
        "--report",
        str(report),
        "--overwrite",
    ]
    assert main(args) == 0
    capsys.readouterr()
    old = {p.relative_to(report): p.read_bytes() for p in report.rglob("*") if p.is_file()}
    real_fsync, synced = os.fsync, []

    def fsync(fd: int) -> None:  # every file of the report is synced before its rename: the disk fills at one
        synced.append(fd)
        if len(synced) > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    assert main(args) != 0
    err = capsys.readouterr().err
    assert f"cannot write the report {report} (images/" in err and "No space left on device" in err, err
    assert "Traceback" not in err and ".tmp" not in err
    assert not any(str(prepared) in line and "cannot read" in line for line in err.splitlines())
    assert {p.relative_to(report): p.read_bytes() for p in report.rglob("*") if p.is_file()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "report"]  # no temp file or folder left


def test_a_full_disk_during_export_names_the_file(ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Fails if export's disk-full error names no file, or leaves its temp file behind."""
    import errno

    import onnx

    from webdino_seg.app.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full)
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(ckpt), "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert f"cannot write {out}: No space left on device" in err, err
    assert list(tmp_path.iterdir()) == []


# --- 4. label files --------------------------------------------------------------------------------------------


def _photo(path: Path, w: int = 64, h: int = 48, orientation: int | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(path, exif=exif)
    return path


def _coco(tmp_path: Path, **changes: object) -> Path:
    """A one-image COCO file (64x48, one person polygon) with `changes` applied to its top-level lists."""
    _photo(tmp_path / "coco" / "a.jpg")
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[4, 4, 30, 4, 30, 30, 4, 30]]}
        ],
    }
    data |= changes
    path = tmp_path / "coco" / "instances.json"
    path.write_text(json.dumps(data))
    return path


def _ann(seg: object, **more: object) -> list[dict]:
    return [{"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": seg} | more]


IMAGE = {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}
COCO_REFUSED = {  # what is changed -> what the one-line error says (after the file's name)
    "two records one id": ({"images": [IMAGE, IMAGE | {"file_name": "b.jpg"}]}, "image id 1 is given 2 times"),
    "one file twice": ({"images": [IMAGE, IMAGE | {"id": 2}]}, "image file_name 'a.jpg' is given 2 times"),
    "two categories one id": (
        {"categories": [{"id": 1, "name": "person"}, {"id": 1, "name": "dog"}]},
        "category id 1 is given 2 times",
    ),
    "NaN": ({"annotations": _ann([[4, 4, float("nan"), 4, 30, 30]])}, "annotation 10: polygon a coordinate is not"),
    "inf": ({"annotations": _ann([[4, 4, float("inf"), 4, 30, 30]])}, "not finite"),
    "huge": ({"annotations": _ann([[4, 4, 3e9, 4, 30, 30]])}, "x = 3e+09 lies outside the image (0-64)"),
    "negative run": ({"annotations": _ann({"size": [48, 64], "counts": [100, -20, 2992]})}, "run is negative"),
    "unknown segmentation": ({"annotations": _ann("polygon")}, "segmentation 'polygon' is neither polygons"),
    "no height": ({"images": [{"id": 1, "file_name": "a.jpg", "width": 64}]}, "image 1 has height None"),
    "no image_id": (
        {"annotations": [{"id": 10, "category_id": 1, "segmentation": [[4, 4, 30, 4, 30, 30]]}]},
        "annotation 10 has image_id None",
    ),
    "no category name": ({"categories": [{"id": 1}]}, "category 1 has name None"),
    "RLE without size": ({"annotations": _ann({"counts": [3072]})}, "an RLE segmentation needs counts and size"),
    "truncated RLE": ({"annotations": _ann({"size": [48, 64], "counts": "0k"})}, "ends inside a number (truncated)"),
    "RLE alphabet": ({"annotations": _ann({"size": [48, 64], "counts": "0~1"})}, "'~', outside COCO's alphabet"),
    "RLE of another size": ({"annotations": _ann({"size": [10, 10], "counts": [100]})}, "RLE size 10x10 (h x w)"),
    "huge declared size": (
        {"images": [IMAGE | {"width": 200_000, "height": 190_000}]},
        "is declared 200000x190000, the file is 64x48 upright",
    ),
}


@pytest.mark.parametrize("case", COCO_REFUSED)
def test_a_coco_file_is_checked_whole_before_anything_is_drawn(case: str, tmp_path: Path, capsys) -> None:
    """Fails if a COCO file with duplicate ids, bad coordinates, a malformed RLE or a missing field is imported
    (exit 0) or gives a traceback, instead of one line naming the file, the record and what is wrong."""
    from webdino_seg.app.cli import main

    changes, needle = COCO_REFUSED[case]
    source, out = _coco(tmp_path, **changes), tmp_path / "out"
    started = time.perf_counter()
    assert main(["prepare-data", "--format", "coco", "--source", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{source}: " in err and needle in err and "Traceback" not in err, err
    assert not out.exists() and time.perf_counter() - started < 10


def test_coco_annotations_left_out_are_counted_and_rotated_photos_are_upright(tmp_path: Path, capsys) -> None:
    """Fails if an annotation of a missing image or without a segmentation is dropped without a word, two images
    with one base name overwrite each other, or a photo with EXIF rotation annotated at its upright size (as CVAT
    and Label Studio record it) is refused."""
    from PIL import Image

    from webdino_seg.app.cli import main

    _photo(tmp_path / "coco" / "x" / "a.jpg")
    _photo(tmp_path / "coco" / "y" / "a.jpg")
    images = [
        {"id": 1, "file_name": "x/a.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "y/a.jpg", "width": 64, "height": 48},
    ]
    source = _coco(tmp_path, images=images)
    assert main(["prepare-data", "--format", "coco", "--source", str(source), "--out", str(tmp_path / "o1")]) == 2
    assert "both would be imported as a.jpg" in capsys.readouterr().err

    _photo(tmp_path / "coco" / "turned.jpg", 64, 48, orientation=6)  # stored 64x48, shown 48x64
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "turned.jpg", "width": 48, "height": 64},
    ]
    annotations = [
        *_ann([[4, 4, 30, 4, 30, 30, 4, 30]]),
        {"id": 11, "image_id": 9, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 12, "image_id": 2, "category_id": 1, "segmentation": [[2, 50, 40, 50, 40, 60, 2, 60]]},
        {"id": 13, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]},
    ]
    source = _coco(tmp_path, images=images, annotations=annotations)
    out = tmp_path / "o2"
    assert main(["prepare-data", "--format", "coco", "--source", str(source), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "1 annotation(s) of an image id with no image record were left out" in said, said
    assert "1 annotation(s) without a segmentation were left out" in said
    masks = {p.name: np.asarray(Image.open(p)) for p in out.glob("*_masks/*.png")}
    turned = masks["turned.png"]  # drawn as COCO does: a polygon's area in pixels (x 2-40 covers columns 2-39)
    assert turned.shape == (64, 48) and (turned[50:60, 2:40] == 1).all() and turned.sum() == 10 * 38
    assert masks["a.png"].sum() == (masks["a.png"] == 1).sum() == 26 * 26


def test_yolo_and_labelme_coordinates_are_checked_before_drawing(tmp_path: Path, capsys) -> None:
    """Fails if a YOLO line with inf or NaN (once minutes of drawing on a 64x48 image) or a LabelMe shape with an
    unknown type, no label or a huge coordinate is drawn, or is refused without naming its file and line/shape."""
    from webdino_seg.app.cli import main

    root = tmp_path / "yolo"
    _photo(root / "images" / "train" / "a.png")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [person]\n")
    for line, needle in (
        ("0 0.1 0.1 inf 0.1 0.5 0.5", "not finite"),
        ("0 0.1 nan 0.5 0.1 0.5 0.5", "not finite"),
        ("0 0.1 0.1 40 0.1 0.5 0.5", "x = 40 lies outside"),
        ("3 0.1 0.1 0.2 0.2", "class 3"),
    ):
        (root / "labels" / "train" / "a.txt").write_text(f"0 0.1 0.1 0.2 0.2\n{line}\n")
        started = time.perf_counter()
        assert main(["prepare-data", "--format", "yolo", "--source", str(root), "--out", str(tmp_path / "y")]) == 2
        err = capsys.readouterr().err
        assert "a.txt:2: " in err and needle in err and time.perf_counter() - started < 10, err

    lm = tmp_path / "lm"
    _photo(lm / "a.jpg")
    for shape, needle in (
        ({"label": "p", "points": [[1, 1], [9, 9]], "shape_type": "mask"}, "shape_type 'mask'"),
        ({"points": [[1, 1], [9, 1], [9, 9]]}, "has no label"),
        ({"label": "p", "points": [[1, 1], [9, 1], [1e30, 9]]}, "x = 1e+30 lies outside"),
        ({"label": "p", "points": [[1, 1], [9, 1]]}, "needs at least 3"),
    ):
        (lm / "a.json").write_text(
            json.dumps({"shapes": [shape], "imagePath": "a.jpg", "imageHeight": 48, "imageWidth": 64})
        )
        assert main(["prepare-data", "--format", "labelme", "--source", str(lm), "--out", str(tmp_path / "l")]) == 2
        err = capsys.readouterr().err
        assert f"{lm / 'a.json'}: shape 1" in err and needle in err, err


def test_the_polygons_of_one_coco_object_are_its_union(tmp_path: Path) -> None:
    """Fails if two overlapping polygons of one annotation cut their overlap out (cv2.fillPoly given both at once
    fills by parity; COCO's object is their union)."""
    from PIL import Image

    from webdino_seg.app.cli import main

    source = _coco(tmp_path, annotations=_ann([[2, 2, 20, 2, 20, 20, 2, 20], [10, 10, 30, 10, 30, 30, 10, 30]]))
    out = tmp_path / "out"
    assert main(["prepare-data", "--format", "coco", "--source", str(source), "--out", str(out)]) == 0
    mask = np.asarray(Image.open(next(out.glob("*_masks/a.png"))))
    assert mask[15, 15] == 1 and (mask == 1).sum() == 18 * 18 + 20 * 20 - 10 * 10  # as COCO draws: areas
