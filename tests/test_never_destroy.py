"""No command writes onto its own inputs, replaces a file it did not write without --overwrite, or leaves temp
files behind when stopped by a signal; caches and resume state are verified before use."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, cli_error, metrics_rows, tiny_config, tiny_train_cli
from webdino_seg import train
from webdino_seg.app.cli import main

CLIP = Path(__file__).parents[1] / "examples" / "people_walking_clip.mp4"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 1. never onto an input ----------------------------------------------------------------------


def test_no_command_writes_onto_its_inputs(ckpt: Path, small: Path, tmp_path: Path, capsys) -> None:
    clip = shutil.copy(CLIP, tmp_path / "in.mp4")
    model = shutil.copy(ckpt, tmp_path / "M.pth")
    keep = {p: _digest(p) for p in (Path(clip), Path(model))}
    video = ["video", "--model", str(model), "--input", str(clip)]
    cli_error([*video, "--out", str(clip)], capsys, "would overwrite the input", "in.mp4")
    os.link(clip, tmp_path / "same.mp4")  # a hard link: another name, the same file
    cli_error([*video, "--out", str(tmp_path / "same.mp4")], capsys, "the same file under another name")
    (tmp_path / "M.json").symlink_to(model)  # a symbolic link to the model
    cli_error(
        ["evaluate", "--data", str(small), "--model", str(model), "--out", str(tmp_path / "M.json")],
        capsys,
        "would overwrite the input",
        "M.pth",
    )
    (tmp_path / "M.onnx").symlink_to(model)
    cli_error(["export", "--model", str(model), "--out", str(tmp_path / "M.onnx")], capsys, "would overwrite the input")
    cli_error(
        [
            "convert-weights",
            str(FIXTURES / "tiny_official.pth"),
            str(FIXTURES / "tiny_official.pth"),
            "--to",
            "official",
        ],
        capsys,
        "would overwrite the input",
    )
    assert {p: _digest(p) for p in keep} == keep
    image = sorted((small / "train_images").iterdir())[0]
    before = _digest(image)
    cli_error(["show-data", str(small), "--out", str(image)], capsys, "would overwrite the input")
    assert _digest(image) == before
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(image, photos / "a.png")
    shutil.copy(image, photos / "a_mask.png")  # a photo that predict's mask of a.png would replace
    cli_error(
        ["predict", "--input", str(photos), "--model", str(model), "--out", str(photos)],
        capsys,
        "a_mask.png would overwrite the input",
    )
    assert _digest(photos / "a_mask.png") == before


def test_a_report_never_goes_into_the_run_folder(trained_run: Path, prepared: Path, tmp_path: Path, capsys) -> None:
    curves = _digest(trained_run / "miou.png")
    argv = [
        "evaluate",
        "--data",
        str(prepared),
        "--model",
        str(trained_run / "best_model_iou.pth"),
        "--report",
        str(trained_run),
        "--out",
        str(tmp_path / "e.json"),
    ]
    cli_error(argv, capsys, "holds inputs of this evaluation")
    assert _digest(trained_run / "miou.png") == curves and not (trained_run / "index.html").exists()


# --- 2. never over a file it did not write, unless asked -----------------------------------------


def test_foreign_files_need_overwrite_own_outputs_are_replaced(ckpt: Path, tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "existing.pth"
    foreign.write_bytes(b"my notes, not weights")
    convert = ["convert-weights", str(FIXTURES / "tiny_official.pth"), str(foreign), "--to", "official"]
    cli_error(convert, capsys, "webdino-seg did not write", "--overwrite")
    assert foreign.read_bytes() == b"my notes, not weights"
    assert main([*convert, "--overwrite"]) == 0 and foreign.stat().st_size > 1000
    video = ["video", "--model", str(ckpt), "--input", str(CLIP), "--max-frames", "3"]
    out = tmp_path / "seg.mp4"
    shutil.copy(CLIP, out)  # somebody's video under the output's name
    cli_error([*video, "--out", str(out)], capsys, "did not write", "--overwrite")
    assert _digest(out) == _digest(CLIP)
    assert main([*video, "--out", str(out), "--overwrite"]) == 0
    assert main([*video, "--out", str(out)]) == 0  # its own earlier output: replaced without asking
    cli_error([*video, "--out", str(tmp_path / "seg.avi")], capsys, "video writes H.264 video", ".mp4")
    assert main([*video, "--out", str(tmp_path / "seg.mkv")]) == 0 and (tmp_path / "seg.mkv").stat().st_size > 0


def test_outputs_are_written_in_the_format_their_name_says(small: Path, tmp_path: Path, capsys) -> None:
    assert main(["show-data", str(small), "--out", str(tmp_path / "grid.jpg"), "--count", "2"]) == 0
    assert (tmp_path / "grid.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, as named
    assert main(["show-data", str(small), "--out", str(tmp_path / "grid.jpg"), "--count", "2"]) == 0  # its own
    assert main(["show-data", str(small), "--out", str(tmp_path / "grid.svg"), "--count", "1"]) == 0
    assert (tmp_path / "grid.svg").read_text().lstrip().startswith("<?xml")
    cli_error(["show-data", str(small), "--out", str(tmp_path / "grid.gif")], capsys, "give a name ending in .png")


# --- 3. signals end commands as Ctrl-C does ------------------------------------------------------


def _run_until(argv: list[str], ready, sig: int, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "webdino_seg", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.slow
def test_sigterm_stops_video_and_leaves_nothing(ckpt: Path, test_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    argv = ["video", "--model", str(ckpt), "--input", str(test_video), "--out", str(out / "v.mp4"), "--device", "cpu"]
    done = _run_until(argv, lambda: any(out.iterdir()), signal.SIGTERM)
    assert done.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in done.stderr, done.stderr[-2000:]
    assert list(out.iterdir()) == []  # the partial video (a hidden temp file) is gone


@pytest.mark.slow
def test_sighup_stops_training_and_says_how_to_continue(prepared: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = tiny_train_cli(prepared, run, imgsz=(224, 224), cache_views=4, epochs=40)
    done = _run_until(argv, lambda: (run / "last.pth").exists(), signal.SIGHUP)  # in the epochs
    assert done.returncode == 128 + signal.SIGHUP and "stopped by SIGHUP" in done.stderr, done.stderr[-2000:]
    assert f"continue with: webdino-seg train --resume {run}" in done.stdout
    assert not list(run.rglob(".*.tmp"))


# --- 4. caches and resume state verified ---------------------------------------------------------


def test_a_damaged_or_foreign_feature_cache_is_said_and_recomputed(small: Path, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    first = train(tiny_config(small, tmp_path / "a", epochs=2, feature_cache_dir=str(cache)), log=lambda *_: None)
    files = sorted(cache.glob("*.pt"), key=lambda p: p.stat().st_size)
    assert len(files) == 2  # valid (smaller), train
    data = bytearray(files[1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    files[1].write_bytes(bytes(data))
    capsys.readouterr()
    again = train(tiny_config(small, tmp_path / "b", epochs=2, feature_cache_dir=str(cache)), log=lambda *_: None)
    err = capsys.readouterr().err
    assert "feature cache" in err and ("checksum does not match" in err or "cannot be read" in err), err
    assert metrics_rows(again, timings=False) == metrics_rows(first, timings=False)
    files[0].rename(tmp_path / "v.pt")  # swap the train and valid files
    files[1].rename(files[0])
    (tmp_path / "v.pt").rename(files[1])
    third = train(tiny_config(small, tmp_path / "c", epochs=2, feature_cache_dir=str(cache)), log=lambda *_: None)
    assert "belongs to another cache" in capsys.readouterr().err
    assert metrics_rows(third, timings=False) == metrics_rows(first, timings=False)
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    train(tiny_config(small, tmp_path / "d", epochs=2, feature_cache_dir=str(cache)), log=lambda *_: None)
    assert "cannot be read" in capsys.readouterr().err


def test_an_unwritable_cache_folder_is_found_first(small: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    cli_error(
        [*tiny_train_cli(small, tmp_path / "r"), "--feature-cache-dir", str(tmp_path / "file" / "c")],
        capsys,
        "--feature-cache-dir",
    )
    cli_error(
        [*tiny_train_cli(small, tmp_path / "r"), "--feature-cache-dir", "/proc/webdino-cache"],
        capsys,
        "--feature-cache-dir /proc/webdino-cache: cannot write there",
    )
    assert not (tmp_path / "r").exists()


def test_resume_refuses_a_config_missing_or_mistyping_a_setting(small: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "r"
    assert main(tiny_train_cli(small, run)) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["lr"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    cli_error(["train", "--resume", str(run), "--epochs", "2"], capsys, "config.yaml: missing lr")
    config["lr"], config["epochs"] = 0.001, "three"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    cli_error(["train", "--resume", str(run), "--epochs", "2"], capsys, "epochs is 'three'; it must be an integer")
    assert len(metrics_rows(run)) == 1


# --- 6. clear messages where there were tracebacks -----------------------------------------------


def test_broken_hf_folders_and_weights_say_what_is_wrong(tmp_path: Path, capsys) -> None:
    import json

    import torch

    hf = tmp_path / "hf"
    shutil.copytree(FIXTURES / "tiny_hf", hf)
    convert = ["convert-weights", str(hf), str(tmp_path / "out.pth"), "--to", "official"]
    config = json.loads((hf / "config.json").read_text())
    for broken, needle in (
        ([config], "holds an object of settings, found a list"),
        ({k: v for k, v in config.items() if k != "hidden_size"}, "lacks 'hidden_size'"),
        (config | {"num_hidden_layers": "four"}, "'num_hidden_layers' is 'four'"),
    ):
        (hf / "config.json").write_text(json.dumps(broken))
        cli_error(convert, capsys, "config.json", needle)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    cli_error(
        ["convert-weights", str(shards), str(tmp_path / "o.pth"), "--to", "official"],
        capsys,
        'model.safetensors.index.json: has no "weight_map"',
    )
    sd = torch.load(FIXTURES / "tiny_official.pth", weights_only=True)
    sd["cls_token"] = sd["cls_token"].to(torch.int8)
    torch.save(sd, tmp_path / "int8.pth")
    from webdino_seg import WeightsError, create_backbone

    with pytest.raises(WeightsError, match=r"1 tensor\(s\) are not floating point, e\.g\. cls_token \(int8\)"):
        create_backbone("webdino-300m", weights=tmp_path / "int8.pth", embed_dim=64, depth=4, num_heads=4)


def test_a_seed_too_large_and_16_bit_binary_masks(small: Path, tmp_path: Path, capsys) -> None:
    import numpy as np
    from PIL import Image

    with pytest.raises(SystemExit) as stop:
        main([*tiny_train_cli(small, tmp_path / "r"), "--seed", str(2**70)])
    assert stop.value.code == 2 and "--seed: must be from 0 to" in capsys.readouterr().err
    data = tmp_path / "d"
    shutil.copytree(small, data)
    for mask in data.glob("*_masks/*.png"):  # 0/65535 16-bit exports of the binary masks
        Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint16) * 65535).save(mask)
    logs: list[str] = []
    train(tiny_config(data, tmp_path / "run", epochs=1), log=logs.append)
    assert any("only the values 0 and 65535: reading them as binary" in line for line in logs), logs
    cli_error(
        ["show-data", str(data), "--out", str(tmp_path / "g.png"), "--mask-mode", "ids"],
        capsys,
        "0/65535 masks are two-class masks: pass --mask-mode binary",
    )


# --- 7. video timing kept ------------------------------------------------------------------------


def _encode(path: Path, times_ms: list[int] | None, rate: int = 10, fmt: str | None = None) -> None:
    """A small H.264 video: frames at `times_ms` (a variable frame rate, time base 1 ms), or, without times, a
    raw stream of 30 frames at `rate` (no container timestamps at all)."""
    from fractions import Fraction

    import av
    import numpy as np

    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, at in enumerate(times_ms if times_ms is not None else range(30)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 20) % 256, np.uint8), format="rgb24")
            frame.pts = at
            if times_ms is not None:
                frame.time_base = Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_variable_frame_rate_keeps_its_timestamps_and_raw_h264_its_rate(ckpt: Path, tmp_path: Path) -> None:
    import av

    times = [0, 100, 150, 400, 450, 500, 900, 1000, 1033, 1066, 1400, 1800]
    _encode(tmp_path / "vfr.mp4", times)
    assert (
        main(["video", "--model", str(ckpt), "--input", str(tmp_path / "vfr.mp4"), "--out", str(tmp_path / "out.mp4")])
        == 0
    )
    with av.open(str(tmp_path / "out.mp4")) as container:
        got = [round(float(f.time) * 1000) for f in container.decode(video=0)]
    assert got == times  # not flattened to the average rate (9.1 fps)
    _encode(tmp_path / "raw.h264", None, rate=25, fmt="h264")
    assert (
        main(["video", "--model", str(ckpt), "--input", str(tmp_path / "raw.h264"), "--out", str(tmp_path / "raw.mp4")])
        == 0
    )
    with av.open(str(tmp_path / "raw.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 25 and abs(float(container.duration) / 1e6 - 30 / 25) < 0.05
