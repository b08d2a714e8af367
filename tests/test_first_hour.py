"""A new user's first hour: the CLI explains itself, masks are read as people store them, a stopped run
keeps its work, and results come with the all-background baseline beside them."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import webdino_seg.engine.features as features_mod
from conftest import assert_same_metrics, cli_error, metrics_rows, tiny_config, tiny_train_cli
from webdino_seg import __version__
from webdino_seg.app.cli import build_parser, main
from webdino_seg.data.datasets import DataError
from webdino_seg.engine.config import TrainConfig, default_workers
from webdino_seg.engine.train import train
from webdino_seg.models.segmentation import SegmentationModel

# --- the command line ----------------------------------------------------------------------------


def test_version_and_debug_anywhere(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"webdino-seg {__version__}"
    bad = ["train", "--data", str(tmp_path / "none")]
    assert main(bad) == 2  # one line
    for argv in (["--debug", *bad], [*bad, "--debug"]):  # the traceback, wherever --debug stands
        with pytest.raises(DataError, match="folder not found"):
            main(argv)


def test_every_flag_has_help_and_its_default() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or not action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):  # this flag's own line shows its default
                assert "default" in formatter._get_help_string(action), (name, action.option_strings)
    assert "Typical use" in parser.format_help()


def test_arch_typo_suggests_the_name(small: Path, tmp_path: Path, capsys) -> None:
    cli_error(tiny_train_cli(small, tmp_path / "r", "--arch", "webdino-tinyy"), capsys, "did you mean webdino-tiny?")
    assert not (tmp_path / "r").exists()


def test_invalid_settings_leave_no_folder(small: Path, tmp_path: Path, capsys) -> None:
    cases = [
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--cache-memory-gb", "0"], "--cache-memory-gb must be positive"),
        (["--class-names", "a", "b", "c", "--num-classes", "2"], "--class-names: 3 names given for 2 classes"),
        (["--class-names", "bg", "car", "car"], "class name(s) given twice: car"),
        (["--num-classes", "300"], "hold at most 255"),
        (["--class-weights", "1,2,3"], "3 weight(s) for 2 classes"),
        (["--ignore-index", "-1"], "--ignore-index must be a mask value"),
    ]
    for flags, needle in cases:
        cli_error(tiny_train_cli(small, tmp_path / "r", *flags), capsys, needle)
        assert not (tmp_path / "r").exists()


def test_workers_default_to_the_cores_we_have() -> None:
    cfg = TrainConfig(data=".", arch="webdino-tiny", imgsz=(56, 56))
    assert cfg.workers is None and cfg.loader_workers == default_workers() == min(8, len(os.sched_getaffinity(0)))


def test_offline_default_weights_say_what_to_do(
    small: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webdino_seg.models import variants

    tiny = variants.VARIANTS["webdino-tiny"]
    monkeypatch.setitem(variants.VARIANTS, "webdino-tiny", tiny.replace(url="http://127.0.0.1:9/official.pth"))
    argv = [a for a in tiny_train_cli(small, tmp_path / "r") if a not in ("--weights", "random")]
    cli_error(
        argv,
        capsys,
        "cannot download http://127.0.0.1:9/official.pth",
        "without internet pass --weights",
        "--weights random",
    )
    assert not (tmp_path / "r").exists()


# --- masks as people store them ------------------------------------------------------------------


def _as_0_255(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for mask in [*dst.glob("*_masks/*.png")]:
        Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8) * 255).save(mask)
    return dst


def test_0_255_masks_train_and_evaluate_like_0_1(small: Path, tmp_path: Path, capsys) -> None:
    data = _as_0_255(small, tmp_path / "data255")
    logs: list[str] = []
    run = train(tiny_config(data, tmp_path / "run", epochs=4, cache_views=1, lr=1e-2), log=logs.append)
    assert any("only the values 0 and 255: reading them as binary" in line for line in logs), logs
    assert yaml.safe_load((run / "config.yaml").read_text())["mask_mode"] == "binary"
    assert max(float(r["valid_iou_person"]) for r in metrics_rows(run)) > 0  # person pixels were learned from
    model = str(run / "best_model_iou.pth")
    reports = []
    for data_dir, out in ((data, "a.json"), (small, "b.json")):
        assert main(["evaluate", "--data", str(data_dir), "--model", model, "--out", str(tmp_path / out)]) == 0
        reports.append(json.loads((tmp_path / out).read_text()))
    assert reports[0]["mask_mode"] == "binary" and reports[1]["mask_mode"] == "ids"
    for key in ("miou", "pixel_accuracy", "iou", "baseline"):
        assert reports[0][key] == reports[1][key], key
    out = capsys.readouterr().out
    assert "reading them as binary" in out and "all-background baseline" in out


def test_flat_images_and_masks_folders(small: Path, tmp_path: Path, capsys) -> None:
    flat = tmp_path / "flat"
    for kind in ("images", "masks"):
        (flat / kind).mkdir(parents=True)
        for split in ("train", "valid"):
            for f in (small / f"{split}_{kind}").iterdir():
                shutil.copy(f, flat / kind / f.name)
    cli_error(tiny_train_cli(flat, tmp_path / "r"), capsys, "images/ and masks/", "--valid-fraction 0.15")
    assert not (tmp_path / "r").exists()
    assert main([*tiny_train_cli(flat, tmp_path / "r"), "--valid-fraction", "0.25"]) == 0
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert len(split["valid"]) == 4 and len(split["train"]) == 12 and not set(split["valid"]) & set(split["train"])
    model = str(tmp_path / "r" / "final_model.pth")
    for extra, scored in (([], split["valid"]), (["--split", "train"], split["train"]), (["--split", "all"], None)):
        out = tmp_path / "eval.json"
        assert main(["evaluate", "--data", str(flat), "--model", model, "--out", str(out), *extra]) == 0
        report = json.loads(out.read_text())
        assert sorted(report["per_image"]) == sorted(scored or split["valid"] + split["train"]), extra
    out = capsys.readouterr().out
    assert "scoring the 4 valid images of the split the model's run recorded" in out and "added since" not in out
    assert main(["show-data", "--data", str(flat), "--out", str(tmp_path / "grid.png"), "--count", "2"]) == 0


def test_a_flat_folders_split_never_moves(small: Path, tmp_path: Path, capsys) -> None:
    """Images added after a run started are never moved into its split: resume refuses, evaluate keeps to it."""
    flat = tmp_path / "flat"
    for kind in ("images", "masks"):
        (flat / kind).mkdir(parents=True)
        for f in sorted((small / f"train_{kind}").iterdir())[:8]:
            shutil.copy(f, flat / kind / f.name)
    run = tmp_path / "r"
    assert main([*tiny_train_cli(flat, run), "--valid-fraction", "0.25"]) == 0
    split = json.loads((run / "split.json").read_text())
    for f in (small / "valid_images").iterdir():  # 4 new photos arrive
        shutil.copy(f, flat / "images" / f.name)
        shutil.copy(small / "valid_masks" / f.name, flat / "masks" / f.name)
    cli_error(
        ["train", "--resume", str(run), "--epochs", "2"],
        capsys,
        "4 image(s) are in neither split of the run",
        "--init-from",
    )
    assert json.loads((run / "split.json").read_text()) == split and len(metrics_rows(run)) == 1
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(flat), "--model", str(run / "best_model_iou.pth"), "--out", str(out)]) == 0
    assert sorted(json.loads(out.read_text())["per_image"]) == sorted(split["valid"])
    assert "4 image(s) added since are in neither split and not scored" in capsys.readouterr().out
    new_run = tmp_path / "more"
    argv = [*tiny_train_cli(flat, new_run), "--valid-fraction", "0.25", "--init-from", str(run / "best_model_iou.pth")]
    assert main(argv) == 0  # a new run learns from all 12, starting from the old model
    assert "starting from the head of" in capsys.readouterr().out
    grown = json.loads((new_run / "split.json").read_text())
    assert set(split["train"]) <= set(grown["train"]) and set(split["valid"]) <= set(grown["valid"])  # none moved
    assert len(grown["train"]) + len(grown["valid"]) == 12


def test_orphan_mask_is_reported(small: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "d"
    shutil.copytree(small, data)
    next((data / "valid_images").iterdir()).unlink()
    cli_error(tiny_train_cli(data, tmp_path / "r"), capsys, "mask(s) in", "have no image")


# --- a stopped run keeps its work ----------------------------------------------------------------


def test_ctrl_c_while_caching_then_resume_matches_uninterrupted(
    small: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train(tiny_config(small, tmp_path / "whole", epochs=3), log=lambda *_: None)
    real_batch = features_mod._compute_batch
    batches = {"n": 0}

    def ctrl_c_at_the_third_batch(*args, **kwargs):  # Ctrl-C reaches the main thread while it computes
        batches["n"] += 1
        if batches["n"] == 3:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(features_mod, "_compute_batch", ctrl_c_at_the_third_batch)
    monkeypatch.setattr(features_mod, "PROTECT_S", 0.0)  # a tiny extraction is saved as it goes, as a long one
    run = tmp_path / "stopped"
    assert main(tiny_train_cli(small, run, imgsz=(112, 112), epochs=3)) == 130  # the settings of `whole`
    monkeypatch.setattr(features_mod, "_compute_batch", real_batch)
    out = capsys.readouterr().out
    assert "interrupted while caching features: the features of 30 of 40 images are kept" in out, out
    assert f"continue with: webdino-seg train --resume {run}" in out
    assert (run / "config.yaml").exists() and not (run / "last.pth").exists()
    computed = {"n": 0}
    real_features = SegmentationModel.features

    def counting(self, images, **kw):
        computed["n"] += len(images)
        return real_features(self, images, **kw)

    monkeypatch.setattr(SegmentationModel, "features", counting)
    assert main(["train", "--resume", str(run)]) == 0
    assert computed["n"] == 40 - 30 + 4  # kept chunks were read back, not recomputed (+4: valid_preds)
    assert_same_metrics(metrics_rows(run), metrics_rows(whole))
    assert not (run / "features").exists()  # removed once the run has finished


def test_views_never_exceed_epochs(small: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    train(tiny_config(small, tmp_path / "r", epochs=2, cache_views=4), log=logs.append)
    assert any(line.startswith("cached 2 view(s) x 12 train") for line in logs), logs


def test_resume_applies_safe_flags_and_refuses_others(small: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for not_a_run in (tmp_path / "empty", tmp_path / "missing", small / "train_images" / "x"):
        cli_error(["train", "--resume", str(not_a_run)], capsys, "no config.yaml there; is it a run folder?")
    run = tmp_path / "r"
    assert main(tiny_train_cli(small, run)) == 0  # 1 epoch
    cli_error(["train", "--resume", str(run), "--lr", "0.5"], capsys, "--lr 0.5 (the run has 0.001)", "start a new run")
    cli_error(["train", "--resume", str(run), "--imgsz", "112", "112"], capsys, "--imgsz")
    baseline_note = [line for line in (run / "config.yaml").read_text().splitlines() if line.startswith("#")]
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert len(metrics_rows(run)) == 2
    text = (run / "config.yaml").read_text()  # it repeats the run as it now is, and says what changed
    assert TrainConfig.from_yaml(run / "config.yaml").epochs == 2
    assert re.search(r"^# resumed \S+ with epochs 2 \(was 1\)$", text, re.M), text
    assert all(line in text for line in baseline_note)
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0  # and it still resumes from it
    assert TrainConfig.from_yaml(run / "config.yaml").epochs == 3 and text.count("# resumed") == 1
    assert (run / "config.yaml").read_text().count("# resumed") == 2


# --- results that explain themselves -------------------------------------------------------------


def test_runs_print_their_baseline_folder_and_next_commands(small: Path, tmp_path: Path, capsys) -> None:
    for expected in (tmp_path / "q", tmp_path / "q-2"):
        assert main(tiny_train_cli(small, tmp_path / "q")) == 0
        out = capsys.readouterr().out.splitlines()
        assert any(
            line.startswith("all-background baseline on valid (predicting background everywhere): mIoU") for line in out
        )
        assert any("(IoU background " in line and " person " in line for line in out)  # per-class, every epoch
        assert f"run folder: {expected}" in out[-6]
        assert re.fullmatch(
            r"best model on the 4 valid images at full size: mIoU [0-9.]+ \[[0-9.]+, [0-9.]+\] \(95% "
            r"interval, bootstrap over the images: a difference inside it may be noise\)",
            out[-5],
        )
        best = f"{expected}/best_model_iou.pth"
        assert out[-4] == f"next: webdino-seg predict --input IMAGES --model {best} --out {expected}/predict"
        assert out[-3].strip().startswith(f"webdino-seg video --input VIDEO.mp4 --model {expected}/best_model_iou.pth")
        assert out[-2].strip().startswith(f"webdino-seg evaluate --data {small} --model {best} --report ")
        assert out[-1].strip() == f"webdino-seg export --model {best} --out {expected}/model.onnx"
    config = (tmp_path / "q" / "config.yaml").read_text()
    assert "# all-background baseline on valid" in config
    ckpt = torch.load(tmp_path / "q" / "best_model_iou.pth", weights_only=True)
    assert 0 < ckpt["baseline"]["miou"] < 1 and ckpt["baseline"]["class"] == 0


def test_valid_preds_are_captioned(trained_run: Path, prepared: Path) -> None:
    from webdino_seg.utils.overlay import caption

    name = sorted((prepared / "valid_images").iterdir())[0]
    picture = np.asarray(Image.open(trained_run / "valid_preds" / f"{name.stem}.png"))
    height, width = np.asarray(Image.open(name)).shape[:2]
    strip = caption(np.zeros((1, width, 3), np.uint8), "x").shape[0] - 1  # the caption strip's height at this width
    below = picture.shape[0] - height - strip  # the legend under the pair
    assert picture.shape[1] == 2 * width + 8 and 10 < strip < 60 and 10 < below < 80
    top = picture[:strip]
    for side in (top[:, :width], top[:, width + 8 :]):
        dark = (side.min(2) < 100).mean()
        assert 0.005 < dark < 0.5  # black text on white
    key = picture[strip + height :]
    assert (key.min(2) < 100).mean() > 0.002  # the class names with their IoU
    assert ((key == [255, 0, 160]).all(-1)).sum() > 20  # the person swatch, in the person colour


def test_ctrl_c_between_epochs_says_the_resume_command_and_a_finished_run_names_what_comes_next(
    small: Path, tmp_path: Path, capsys
) -> None:
    import shlex

    lines: list[str] = []

    def log_then_stop(line: str) -> None:
        lines.append(line)
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(small, run, imgsz=(56, 56), epochs=2), log=log_then_stop)
    assert (
        lines[-1] == f"interrupted after epoch 1 of 2 (saved in {run / 'last.pth'}); continue with: "
        f"webdino-seg train --resume {run}"
    )
    capsys.readouterr()
    assert main(shlex.split(lines[-1].split("continue with: webdino-seg ")[1])) == 0
    out = capsys.readouterr().out
    assert metrics_rows(run)[-1]["epoch"] == "2"
    nexts = [
        line.split("webdino-seg ", 1)[1]
        for line in out.splitlines()
        if "webdino-seg evaluate" in line or "webdino-seg export" in line
    ]
    assert [n.split()[0] for n in nexts] == ["evaluate", "export"] and "--report" in nexts[0]
    for command in nexts:  # the commands it names work as printed
        assert main(shlex.split(command)) == 0, command
    assert (run / "report" / "index.html").exists() and (run / "model.onnx").stat().st_size > 0


def test_ctrl_c_while_the_final_images_are_drawn_says_how_to_finish(small: Path, tmp_path: Path, monkeypatch) -> None:
    import webdino_seg.engine.artifacts as artifacts_mod

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    lines: list[str] = []
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(artifacts_mod, "write_valid_preds", stop)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(small, run, imgsz=(56, 56), epochs=1), log=lines.append)
    assert (
        lines[-1] == f"interrupted after epoch 1 of 1 (saved in {run / 'last.pth'}); continue with: "
        f"webdino-seg train --resume {run}"
    )
    assert main(["train", "--resume", str(run)]) == 0  # no epoch left: it makes the final files
    assert len(list((run / "valid_preds").iterdir())) == 4 and len(metrics_rows(run)) == 1


def test_a_long_job_says_how_long_and_how_to_go_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    from webdino_seg.engine import eta

    clock = iter([0.0, 5.0, 6.0, 7.0, 9.75])  # made at 0 s; the first image (warm-up) at 5 s, then three more
    monkeypatch.setattr(eta.time, "perf_counter", lambda: next(clock))
    cpu = torch.device("cpu")
    faster = eta.faster_options((644, 644), 14, "webdino-300m", cpu)
    estimate = eta.Estimate("caching train features", 584, "image", cpu, after=3, faster=faster)
    assert [estimate.update() for _ in range(3)] == [[], [], []]
    lines = estimate.update()  # 5 s of warm-up + 583 images at (9.75 - 5) / 3 s
    assert lines == [
        "caching train features: about 15 min on this CPU for 584 images (1.58 s/image, measured on "
        "3 after the first 1)",
        faster,
    ]
    assert estimate.update() == []  # said once
    assert [eta.duration(s) for s in (0.2, 59, 600, 9600)] == ["1 s", "59 s", "10 min", "2 h 40 min"]
    clock = iter([0.0, 4.0, 0.0, 1.0])
    medium = eta.Estimate("training 4 epoch(s)", 10, "step", cpu, after=1, warmup=0)
    assert medium.update() == ["training 4 epoch(s): about 40 s on this CPU for 10 steps (4.00 s/step, measured on 1)"]
    assert eta.Estimate("short", 10, "step", cpu, after=1, warmup=0).update() == []  # 10 s: not worth saying
    clock = iter([0.0, 4.0])
    gpu = eta.Estimate("training 4 epoch(s)", 10, "step", torch.device("cuda"), after=1, warmup=0).update()
    assert gpu == ["training 4 epoch(s): about 40 s on this GPU for 10 steps (4.00 s/step, measured on 1)"]


def test_the_advice_comes_from_the_runs_own_settings() -> None:
    """Never a larger size or a bigger model than the run's, nor a GPU to a GPU run."""
    from webdino_seg.engine.eta import faster_options

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert faster_options((644, 644), 14, "webdino-300m", cpu) == (
        "faster: a smaller --imgsz (e.g. --imgsz 322 322), a GPU (--device cuda)"
    )  # nothing smaller has weights
    assert faster_options((168, 224), 14, "webdino-tiny", cpu) == (
        "faster: a smaller --imgsz (e.g. --imgsz 84 112), a GPU (--device cuda)"
    )
    assert faster_options((644, 644), 14, "webdino-1b", gpu) == (
        "faster: a smaller --imgsz (e.g. --imgsz 322 322), the --weights of a smaller --arch (e.g. webdino-300m "
        "instead of webdino-1b)"
    )
    assert faster_options((56, 56), 14, "webdino-tiny", gpu) is None


def test_a_run_folders_config_reproduces_the_run_and_bad_configs_name_the_key(
    small: Path, tmp_path: Path, capsys
) -> None:
    first = tmp_path / "first"
    assert main(tiny_train_cli(small, first, epochs=2)) == 0
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "config.yaml"), "--out", str(again)]) == 0
    assert_same_metrics(metrics_rows(again), metrics_rows(first))
    assert yaml.safe_load((again / "config.yaml").read_text()) == yaml.safe_load(
        (first / "config.yaml").read_text()
    ) | {"out": str(again)}
    capsys.readouterr()
    longer = tmp_path / "longer"  # a flag given on the command line wins over the file
    assert main(["train", "--config", str(first / "config.yaml"), "--out", str(longer), "--epochs", "3"]) == 0
    assert len(metrics_rows(longer)) == 3
    assert yaml.safe_load((longer / "config.yaml").read_text()) == yaml.safe_load(
        (first / "config.yaml").read_text()
    ) | {"out": str(longer), "epochs": 3}
    bad = tmp_path / "bad.yaml"
    for text, needle in (
        ("data: x\nepoch: 3\n", "unknown setting(s) epoch"),
        ("epochs: three\n", "epochs is 'three'"),
        ("imgsz: 224\n", "imgsz is 224; it must be a list of 2 values, each an integer"),
        ("- a\n", "not a settings file"),
        ("lr: [\n", "not valid YAML"),
    ):
        bad.write_text(text)
        cli_error(["train", "--config", str(bad), "--out", str(tmp_path / "never")], capsys, str(bad), needle)
    assert not (tmp_path / "never").exists()


def test_the_example_config_is_a_valid_recipe() -> None:
    from webdino_seg.engine.config import read_settings

    example = Path(__file__).resolve().parents[1] / "examples" / "pennfudan-webdino300m.yaml"
    settings = read_settings(example)
    assert settings["arch"] == "webdino-300m" and settings["imgsz"] == [644, 644] and settings["epochs"] == 60
    TrainConfig(**settings)  # every value passes the checks a run makes


def test_tensorboard_events_hold_every_epochs_scores_and_previews(small: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(tiny_train_cli(small, run, "--tensorboard", epochs=3)) == 0
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    rows = metrics_rows(run)
    tags = events.Tags()
    for key in ("loss", "pixel_acc", "miou"):
        for split in ("train", "valid"):
            got = [(e.step, e.value) for e in events.Scalars(f"{key}/{split}")]
            assert got == [(int(r["epoch"]), pytest.approx(float(r[f"{split}_{key}"]), rel=1e-6)) for r in rows]
    assert [e.value for e in events.Scalars("valid_iou/person")] == pytest.approx(
        [float(r["valid_iou_person"]) for r in rows], rel=1e-6
    )
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([float(r["lr"]) for r in rows])
    previews = [t for t in tags["images"] if t.startswith("valid_preds/")]
    assert len(previews) == 3 and all(len(events.Images(t)) == 3 for t in previews)
    picture = events.Images(previews[0])[-1]
    assert picture.width > 2 * 56 and picture.height > 56  # ground truth | prediction, captioned


def test_tensorboard_missing_is_said_before_anything_is_made(
    small: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    cli_error(tiny_train_cli(small, tmp_path / "run", "--tensorboard"), capsys, "webdino-seg[tensorboard]")
    assert not (tmp_path / "run").exists()
