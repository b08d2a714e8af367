"""Set-up that fails fast: tools/ensure_torch.py against indexes that answer, fail or never answer."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "ensure_torch.py"


def _fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A 'python' without torch whose pip fails; it logs the arguments it was called with."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexit 1\n')
    fake.chmod(0o755)
    return fake, log


def _run(python: Path, *pip_args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    cmd = [sys.executable, str(SCRIPT), "--python", str(python), "--timeout", "1", "--", *pip_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


def test_an_index_that_never_answers_fails_fast_with_the_way_out(tmp_path: Path) -> None:
    fake, log = _fake_python(tmp_path)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/whl/cpu"
        proc, seconds = _run(fake, "torch>=2.4", "--index-url", url)
    assert proc.returncode == 1 and seconds < 10, (proc.stderr, seconds)
    assert f"cannot reach {url}" in proc.stderr and 'TORCH_PIP="torch==' in proc.stderr
    assert "pip" not in log.read_text()  # pip never ran: only the torch check did


def test_an_index_without_torch_and_a_failing_pip_both_say_what_to_do(tmp_path: Path, server) -> None:
    base, _ = server
    fake, log = _fake_python(tmp_path)
    proc, _ = _run(fake, "torch", "--index-url", f"{base}/simple")
    assert proc.returncode == 1 and "HTTP 404" in proc.stderr and "TORCH_PIP=" in proc.stderr
    (tmp_path / "srv" / "simple" / "torch").mkdir(parents=True)
    (tmp_path / "srv" / "simple" / "torch" / "index.html").write_text("<a href='torch-9.whl'>torch-9.whl</a>")
    proc, _ = _run(fake, "torch", "--index-url", f"{base}/simple")
    assert proc.returncode == 1 and "pip could not install torch" in proc.stderr and "installing torch" in proc.stdout
    pip = f"-m pip install --retries 2 --timeout 30 --progress-bar on torch --index-url {base}/simple"
    assert pip in log.read_text()


def test_an_environment_with_torch_is_left_alone(tmp_path: Path) -> None:
    proc, _ = _run(Path(sys.executable), "torch", "--index-url", "http://127.0.0.1:9/none")
    assert proc.returncode == 0 and proc.stdout == proc.stderr == ""


def test_every_train_flag_takes_its_default_and_choices_from_the_library() -> None:
    """One source of truth: each `train` flag's default is `TrainConfig`'s, its choices the library's own lists,
    and every setting has its flag (``--no-X`` for a setting X that is on by default)."""
    import argparse
    import dataclasses

    from webdino_seg.app.parser import build_parser
    from webdino_seg.data.images import MASK_MODES
    from webdino_seg.engine.config import TrainConfig
    from webdino_seg.engine.losses import LOSSES
    from webdino_seg.models.heads import HEADS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    seen = set()
    for action in train._actions:
        name = action.dest.removeprefix("no_")
        if name not in fields:
            continue
        seen.add(name)
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is dataclasses.MISSING:  # --data: required (by the flag or a --config file)
            assert action.default is None, name
        elif action.dest.startswith("no_"):  # --no-cache: on unless given
            assert default is True and action.default is False, name
        elif isinstance(action.default, bool) or action.nargs == 0:
            assert action.default is False and default is False, name
        else:
            shown = (
                tuple(action.default)
                if isinstance(action.default, list) and isinstance(default, tuple)
                else (action.default)
            )
            assert shown == default or (action.default is None and default is None), (name, action.default, default)
    assert seen == set(fields) - {"class_colors"}, set(fields) - seen  # colours: from classes.json, no flag
    choices = {a.dest: a.choices for a in train._actions if a.choices}
    assert choices == {"head": list(HEADS), "loss": list(LOSSES), "mask_mode": MASK_MODES}


def test_help_answers_without_importing_torch() -> None:
    """`webdino-seg --help` and every command's --help build the parser from torch-free name lists and settings."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom webdino_seg.app.cli import main\nfrom webdino_seg.app.parser import SUBCOMMANDS\n"
        "for argv in (['--help'], *([add.__name__.strip('_').replace('_', '-'), '--help'] for add in SUBCOMMANDS)):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('webdino_seg'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Train a segmentation head" in done.stdout and "usage: webdino-seg evaluate" in done.stdout


@pytest.mark.slow
def test_every_help_ends_with_an_example_that_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    """Each command's --help ends with one example; those that need no download, weights file, server or long run
    are run here as written, from a copy of the repository's examples (the model ones use the train example's)."""
    import shlex

    from webdino_seg.app.cli import main
    from webdino_seg.app.parser import EXAMPLES, SUBCOMMANDS

    assert len(EXAMPLES) == len(SUBCOMMANDS)
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for name in ("info", "prepare-data", "show-data", "train", "sweep", "evaluate", "predict", "video", "export"):
        argv = shlex.split(EXAMPLES[name])
        assert argv[:2] == ["webdino-seg", name]
        assert main(argv[1:]) == 0, EXAMPLES[name]
    assert (tmp_path / "runs/tiny/report/index.html").exists() and (tmp_path / "runs/tiny/model.onnx").exists()


def test_inference_defaults_live_once_and_every_flag_and_function_reads_them() -> None:
    """predict, video, evaluate and demo take their defaults from `InferenceSettings`, and so do the library
    functions behind them: a default changed there changes everywhere, and no copy can drift."""
    import inspect

    from webdino_seg.app.parser import build_parser
    from webdino_seg.inference.evaluate import evaluate
    from webdino_seg.inference.predict import predict_paths
    from webdino_seg.inference.predictor import Predictor
    from webdino_seg.inference.settings import DEFAULTS, fields
    from webdino_seg.inference.video import run_video

    commands = build_parser()._subparsers._group_actions[0].choices
    seen = set()
    for name in ("predict", "video", "evaluate", "demo"):
        for action in commands[name]._actions:
            if action.dest in fields():
                assert action.default == getattr(DEFAULTS, action.dest), (name, action.dest)
                seen.add(action.dest)
    assert seen == set(fields()), set(fields()) - seen  # every setting has its flag
    for fn in (Predictor.from_checkpoint, predict_paths, run_video, evaluate):
        for param in inspect.signature(fn).parameters.values():
            if param.name in fields():
                assert param.default == getattr(DEFAULTS, param.name), (fn.__qualname__, param.name)
