"""The sweep: candidates trained on one feature cache, each equal to its standalone run; the paired leaderboard
and its verdict; Ctrl-C and resume; a failed candidate; the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_same_metrics, cli_error, metrics_rows, tiny_config
from webdino_seg.engine import features
from webdino_seg.engine.leaderboard import baseline_matrices, rank
from webdino_seg.engine.sweep import candidates, read_sweep_file, resume_sweep, sweep
from webdino_seg.utils.metrics import ConfusionMatrix

HEADS3 = ["simple", "linear4", "guided"]
BASELINE = "all-background baseline"  # the 2-class sample's background is its most frequent class


def _count_extractions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every call of the backbone extraction, recorded as the images it extracts."""
    calls: list[int] = []
    real = features.extract

    def counted(**kwargs):
        calls.append(len(kwargs["dataset"]))
        return real(**kwargs)

    monkeypatch.setattr(features, "extract", counted)
    return calls


def _scores(folder: Path) -> list[dict]:
    """The leaderboard's rows without what the clock measured."""
    rows = json.loads((folder / "leaderboard.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if k not in ("head_ms", "train_s")} for row in rows]


def test_candidates_are_every_combination_named_by_what_varies() -> None:
    grid = {"head": ["simple", "linear4"], "lr": [1e-4, 1e-3], "loss": ["ce"]}
    names = [c.name for c in candidates(grid)]
    assert names == ["simple-lr0.0001", "simple-lr0.001", "linear4-lr0.0001", "linear4-lr0.001"]
    assert candidates(grid)[3].changes == {"head": "linear4", "lr": 1e-3, "loss": "ce"}
    assert [c.name for c in candidates({"loss": ["ce", "ce+dice"]})] == ["ce", "ce+dice"]
    assert [c.name for c in candidates({"head": ["guided"]})] == ["guided"]
    for grid, needle in (
        ({"epochs": [1, 2]}, "a sweep varies head, lr, loss, class_weights, batch; not 'epochs'"),
        ({"head": []}, "give a list of one or more values"),
        ({"lr": [1e-4, 1e-4]}, "repeats a value"),
        ({"lr": ["fast"]}, "lr is 'fast'; it must be a number"),
    ):
        with pytest.raises(ValueError, match=needle):
            candidates(grid)


def test_a_sweep_extracts_once_and_each_candidate_equals_its_own_train_run(small, tmp_path, monkeypatch) -> None:
    """Three heads reading different things (the last layer, the last 4, the last layer and the image): one
    extraction per split for all of them; each candidate's epochs, best model and scores equal a standalone
    `train` with the same settings."""
    from webdino_seg import train

    calls = _count_extractions(monkeypatch)
    base = tiny_config(small, tmp_path / "sweep", epochs=2, cache_views=2)
    folder = sweep(base, {"head": HEADS3}, log=lambda _: None)
    assert calls == [12, 4]  # train split (its 2 views in one extraction) and valid split, once for all three
    assert sorted(p.name for p in (folder / "features").iterdir()) == sorted(
        p.name for p in (folder / "features").glob("*.pt")
    )
    for head in HEADS3:
        alone = train(tiny_config(small, tmp_path / f"alone-{head}", epochs=2, cache_views=2, head=head), log=print)
        assert_same_metrics(metrics_rows(folder / head), metrics_rows(alone), rel=1e-6)
        mine, theirs = (json.loads((run / "valid_scores.json").read_text()) for run in (folder / head, alone))
        assert mine["confusion"] == theirs["confusion"] and mine["miou"] == theirs["miou"]
    board = json.loads((folder / "leaderboard.json").read_text())
    assert {row["name"] for row in board["rows"]} == {*HEADS3, BASELINE}
    best = board["rows"][0] if board["rows"][0]["name"] != BASELINE else board["rows"][1]
    assert (folder / "best_model_iou.pth").read_bytes() == (folder / best["name"] / "best_model_iou.pth").read_bytes()
    for name in ("leaderboard.csv", "leaderboard.png", "leaderboard.html"):
        assert (folder / name).stat().st_size > 0


def _mats(seed: int, n: int = 12) -> torch.Tensor:
    mats = torch.randint(0, 50, (n, 3, 3), generator=torch.Generator().manual_seed(seed))
    mats[:, torch.arange(3), torch.arange(3)] += 200  # mostly right
    return mats


def _entry(name: str, mats: torch.Tensor, names: list[str] | None = None) -> dict:
    names = names or [f"img{i}.png" for i in range(len(mats))]
    confusion = {n: m.tolist() for n, m in zip(names, mats, strict=True)}
    return {
        "name": name,
        "settings": {},
        "status": "done",
        "scores": {"confusion": confusion},
        "params": 1,
        "head_ms": 0.1,
        "train_s": 1.0,
    }


def test_the_difference_interval_is_paired_bootstrap_by_hand() -> None:
    """Written out: each draw picks the same N images for both candidates; the difference of their mIoUs over
    that draw; the interval is the 2.5th and 97.5th percentile of those differences."""
    a, b = _mats(1), _mats(2)
    b[:, 0, 1] += 60  # b confuses class 0 with 1 more often
    board = rank([_entry("a", a), _entry("b", b)], ["x", "y", "z"])
    generator, diffs = torch.Generator().manual_seed(0), []
    for _ in range(10):
        for picks in torch.randint(0, 12, (100, 12), generator=generator):
            one, two = ConfusionMatrix(3), ConfusionMatrix(3)
            one.mat, two.mat = a[picks].sum(0), b[picks].sum(0)
            diffs.append(one.miou() - two.miou())
    row = next(r for r in board["rows"] if r["name"] == "b")
    assert np.allclose(row["behind_leader_ci"], np.percentile(diffs, [2.5, 97.5]), rtol=0, atol=1e-12)
    assert board["rows"][0]["name"] == "a" and board["rows"][0]["leader"]
    assert board["verdict"].startswith("a leads b by ")


def test_two_identical_candidates_are_within_noise_and_the_baseline_is_a_row() -> None:
    mats = _mats(3)
    board = rank([_entry("one", mats), _entry("two", mats.clone())], ["x", "y", "z"])
    assert board["verdict"].startswith("one and two are within noise: one ahead by 0.000 [0.000, 0.000]")
    base = next(r for r in board["rows"] if r["status"] == "baseline")
    truth = mats.sum(-1)  # the baseline predicts the most frequent true class at every pixel
    top = int(truth.sum(0).argmax())
    cm = ConfusionMatrix(3)
    cm.mat = torch.zeros(3, 3, dtype=torch.int64)
    cm.mat[:, top] = truth.sum(0)
    assert base["miou"] == pytest.approx(cm.miou()) and base["pixel_acc"] == pytest.approx(cm.pixel_accuracy())
    assert baseline_matrices(mats)[0].sum() == mats.sum() and baseline_matrices(mats)[1] == top
    assert base["name"] == f"all-{'xyz'[top]} baseline" and base["status"] == "baseline"
    assert f"it beats the {base['name']} by" in board["verdict"]
    with pytest.raises(ValueError, match="candidate two was scored on other valid images than one"):
        rank([_entry("one", mats), _entry("two", mats, [f"other{i}.png" for i in range(12)])], ["x", "y", "z"])


@pytest.mark.slow
def test_ctrl_c_in_the_third_candidate_then_resume_keeps_the_first_two_and_the_cache(
    small, tmp_path, monkeypatch
) -> None:
    import webdino_seg.engine.train as training

    grid = {"head": HEADS3}
    whole = sweep(tiny_config(small, tmp_path / "whole", epochs=2), grid, log=lambda _: None)

    def stop_in_the_third(line: str) -> None:
        if line.startswith("[3/3 guided] epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(tiny_config(small, tmp_path / "stopped", epochs=2), grid, log=stop_in_the_third)
    folder = tmp_path / "stopped"
    state = json.loads((folder / "sweep.json").read_text())
    assert [c["status"] for c in state["candidates"]] == ["done", "done", "running"]
    kept = {h: (folder / h / "best_model_iou.pth").stat().st_mtime_ns for h in HEADS3[:2]}
    calls = _count_extractions(monkeypatch)
    trained: list = []
    for name in ("train", "resume"):
        real = getattr(training, name)
        monkeypatch.setattr(
            training, name, lambda *a, real=real, name=name, **k: trained.append((name, a)) or real(*a, **k)
        )
    lines: list[str] = []
    resume_sweep(folder, log=lines.append)
    assert calls == []  # the kept features were read
    assert trained == [("resume", (folder / "guided",))]  # only the third, resumed
    assert {h: (folder / h / "best_model_iou.pth").stat().st_mtime_ns for h in HEADS3[:2]} == kept
    assert "resuming sweep" in lines[0] and "2 of 3 candidates finished" in lines[0]
    assert _scores(folder) == _scores(whole)


def test_a_failed_candidate_is_recorded_and_the_sweep_goes_on(small, tmp_path) -> None:
    """A learning rate that makes the loss NaN fails its candidate; the others are ranked."""
    lines: list[str] = []
    folder = sweep(tiny_config(small, tmp_path / "sweep", epochs=1), {"lr": [1e-3, 1e20]}, log=lines.append)
    state = json.loads((folder / "sweep.json").read_text())
    assert [c["status"] for c in state["candidates"]] == ["done", "failed"]
    assert "loss became nan" in state["candidates"][1]["message"]
    rows = json.loads((folder / "leaderboard.json").read_text())["rows"]
    assert rows[-1] == {
        "name": "lr1e+20",
        "settings": {"lr": 1e20},
        "status": "failed",
        "message": state["candidates"][1]["message"],
    }
    assert any(line.startswith("3,lr1e+20,failed,") for line in (folder / "leaderboard.csv").read_text().splitlines())
    assert "failed: TrainingError: loss became nan" in (folder / "leaderboard.html").read_text()


def test_the_sweep_command_and_its_settings_file(small, tmp_path, capsys) -> None:
    from webdino_seg.app.cli import main

    config = tmp_path / "sweep.yaml"
    config.write_text(
        f"data: {small}\narch: webdino-tiny\nweights: random\nimgsz: [56, 56]\nepochs: 1\nworkers: 0\n"
        "sweep:\n  head: [simple, linear4]\n"
    )
    settings, grid = read_sweep_file(config)
    assert grid == {"head": ["simple", "linear4"]} and settings["arch"] == "webdino-tiny"
    assert main(["sweep", "--config", str(config), "--lr", "1e-3", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "leaderboard: " in out and "best: " in out
    state = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [c["name"] for c in state["candidates"]] == ["simple", "linear4"]
    assert state["grid"] == {"head": ["simple", "linear4"], "lr": [1e-3]}
    cli_error(["sweep", "--resume", str(tmp_path / "s"), "--lr", "1"], capsys, "give no other settings")
    cli_error(["sweep", "--data", str(small), "--heads", "simple,tiny"], capsys, "--head 'tiny': use one of")
    cli_error(["sweep", "--resume", str(tmp_path)], capsys, "not a sweep folder")
    config.write_text("data: x\nsweep:\n  epochs: [1]\n")
    cli_error(["sweep", "--config", str(config)], capsys, "sweep.yaml: a sweep varies")
