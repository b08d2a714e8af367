"""Docs that cannot go stale: every shell block in README.md and docs/ is run here or says why not, every
`webdino-seg` command in them parses with today's flags, measured tables equal their JSON, and the site builds
with no broken link or anchor.

Rule for the blocks that are run (from a folder where `examples/` is the repository's): each command runs as
written, except that a training (`train`, `sweep`) runs 1 epoch at 56x56, `--arch webdino-300m` becomes the tiny
backbone with random weights, and `data/pennfudan` becomes the bundled sample.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```bash\n(?P<body>.*?)```", re.S)


def _documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_blocks() -> list[tuple[str, str, str | None]]:
    """(where, body, why it is not run or None) of every ```bash block of README.md and docs/."""
    blocks = []
    for doc in _documents():
        text = doc.read_text()
        for match in BLOCK.finditer("\n" + text):
            why = re.fullmatch(r"<!-- not run: (.+) -->", match["before"])
            line = text[: match.start()].count("\n") + 2
            blocks.append((f"{doc.relative_to(REPO)}:{line}", match["body"], why[1] if why else None))
    return blocks


def commands(body: str) -> list[list[str]]:
    """The command lines of a shell block, continuation lines joined, comments and blank lines left out."""
    joined = body.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def _substituted(argv: list[str]) -> list[str]:
    """A documented command as the tests run it (see the module's docstring)."""
    argv = ["examples/pennfudan-sample" if a == "data/pennfudan" else a for a in argv]
    if "--arch" in argv and argv[argv.index("--arch") + 1] == "webdino-300m":
        i = argv.index("--arch")
        argv[i : i + 2] = ["--arch", "webdino-tiny", "--weights", "random"]
    if argv[1] in ("train", "sweep"):
        for flag, values in (("--epochs", ["1"]), ("--imgsz", ["56", "56"])):
            if flag in argv:
                i = argv.index(flag)
                del argv[i : i + 1 + len(values)]
            argv += [flag, *values]
    return argv


def test_every_shell_block_is_run_or_says_why_and_every_command_parses() -> None:
    from webdino_seg.app.parser import build_parser

    blocks = shell_blocks()
    assert len(blocks) >= 20
    parser = build_parser()
    for where, body, why in blocks:
        assert why is None or len(why) > 10, f"{where}: say why it is not run"
        for argv in commands(body):
            if argv[0] != "webdino-seg":
                assert why is not None, f"{where}: {argv[0]} is not run by the tests: mark the block not run, why"
                continue
            try:
                parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse with today's flags")
    run = [b for b in blocks if b[2] is None]
    print(f"{len(run)} shell blocks run by the tests, {len(blocks) - len(run)} not run (each says why)")
    assert run, "no documented block is run"


@pytest.mark.slow
def test_the_blocks_not_marked_run_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from webdino_seg.app.cli import main

    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    for where, body, why in shell_blocks():
        if why is not None:
            continue
        for argv in commands(body):
            argv = _substituted(argv)
            assert main(argv[1:]) == 0, f"{where}: `{shlex.join(argv)}` failed"
    assert (tmp_path / "runs" / "quickstart" / "best_model_iou.pth").exists()
    assert (tmp_path / "runs" / "sweep" / "leaderboard.html").exists()


def test_measured_tables_equal_their_json() -> None:
    spec = importlib.util.spec_from_file_location("tables", REPO / "tools" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    found = 0
    for doc in tables.documents():
        text = doc.read_text()
        found += text.count("<!-- measured-table: ")
        _, changed = tables.update(text)
        assert not changed, f"{doc.name}: a table differs from {changed}; run python tools/tables.py"
    assert found >= 2
    readme = (REPO / "README.md").read_text()
    stale = readme.replace("| 8.4x |", "| 9.4x |", 1)  # one figure edited by hand
    assert stale != readme and tables.update(stale)[1] == ["benchmarks/measured/h200_webdino-300m.json"]
    assert tables.main(["--check"]) == 0


def test_the_readme_is_short_and_links_every_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


@pytest.mark.skipif(
    shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
    reason="mkdocs is not installed (pip install -e '.[docs]')",
)
def test_the_site_builds_strictly_and_fetches_nothing(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run(
        [str(mkdocs if mkdocs.exists() else "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pages = list((tmp_path / "site").glob("*.html"))
    assert len(pages) >= 13
    for page in pages:
        html = page.read_text()
        remote = re.findall(r"""<(?:script|link)[^>]+(?:src|href)=["'](https?://[^"']+)""", html)
        assert not remote, f"{page.name} fetches {remote}"
    assert "Every training setting" in (tmp_path / "site" / "api.html").read_text()  # made from the docstrings


def test_each_command_help_ends_with_an_example_and_its_docs_page(capsys: pytest.CaptureFixture) -> None:
    from webdino_seg.app.cli import main
    from webdino_seg.app.parser import DOCS, EXAMPLES

    assert set(DOCS) == set(EXAMPLES)
    for name, page in DOCS.items():
        path, _, anchor = page.partition("#")
        text = (REPO / "docs" / path).read_text()
        assert not anchor or f"## {anchor.replace('-', ' ')}" in text.lower().replace("?", ""), page
        with pytest.raises(SystemExit):
            main([name, "--help"])
        shown = capsys.readouterr().out
        assert shown.rstrip().endswith(f"example:\n  {EXAMPLES[name]}\n\ndocs: docs/{page}"), name
