"""The benchmark runs both recipes for real and reports every figure with its spread (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import webdino_seg.app.benchmark as bench
from conftest import make_subset
from webdino_seg.app.cli import main
from webdino_seg.engine.train import train
from webdino_seg.models.dinov2 import DinoVisionTransformer


@pytest.fixture(scope="module")
def tiny_data(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_subset(prepared, tmp_path_factory.mktemp("bench") / "data", 6, 2)


@pytest.mark.slow  # 10 s: the default run stays under 3 minutes
def test_benchmark_prints_the_table(tiny_data: Path, test_video: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["benchmark", "--arch", "webdino-tiny", "--imgsz", "56", "56", "--device", "cpu", "--quick",
            "--video", str(test_video), "--data", str(tiny_data), "--epochs", "3", "--tutorial-epochs", "1",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    for row in ("training, 3 epochs, seconds (tutorial: extrapolated*)", "backbone images/s, batch 1",
                "video end to end", "median [min-max] of 3 runs", "attention: tutorial math"):  # fmt: skip
        assert row in table, table
    figures = json.loads(out.read_text())
    for key in ("ours_train_s", "tutorial_train_extrapolated_s", "ours_video_fps", "ours_backbone_img_s_b1"):
        assert len(figures[key]["runs"]) == 3 and figures[key]["min"] <= figures[key]["median"] <= figures[key]["max"]
    assert figures["runtime"]["device"] == "cpu" and figures["runtime"]["torch"] == torch.__version__
    assert figures["sdpa"]["tutorial"] == "math" and figures["sdpa"]["ours"] != "math"


def test_each_recipe_does_what_its_row_says(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The tutorial's run computes the backbone on every batch of every epoch with the plain math kernel; ours
    computes each cached view once. Swapping the two recipes fails here."""
    seen: list[tuple[int, str]] = []
    real = DinoVisionTransformer.forward_features

    def counting(self, x):
        math_only = torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
        seen.append((len(x), "math" if math_only else "fused"))
        return real(self, x)

    monkeypatch.setattr(DinoVisionTransformer, "forward_features", counting)
    common = {"arch": "webdino-tiny", "weights": "random", "imgsz": (56, 56), "epochs": 3, "batch": 2, "workers": 0,
              "cache_views": 2}  # fmt: skip
    with bench.tutorial_mode():
        train(bench.tutorial_config(tiny_data, tmp_path / "t", **common), log=lambda *_: None)
    tutorial = list(seen)
    seen.clear()
    train(bench.our_config(tiny_data, tmp_path / "o", **common), log=lambda *_: None)
    ours = list(seen)
    images = lambda calls: sum(n for n, _ in calls)  # noqa: E731
    assert images(tutorial) == 3 * (6 + 2) + 2  # every epoch, train and valid; then valid_preds
    assert images(ours) == 2 * 6 + 2 + 2  # 2 cached views of the train split, valid once; then valid_preds
    assert {kind for _, kind in tutorial} == {"math"} and {kind for _, kind in ours} == {"fused"}


def test_tutorial_schedule_is_extrapolated_from_its_own_epochs(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,seconds\n1,2.0\n2,4.0\n")
    calls = iter([(30.0, run), (10.0, run)] * 3)  # ours, tutorial; three times
    monkeypatch.setattr(bench, "_timed_train", lambda cfg, device, mode: next(calls))
    res = bench.bench_training("d", "webdino-tiny", (56, 56), torch.device("cpu"), 60, 2, 4, 3)
    assert res["ours_train_s"]["median"] == 30.0 and res["tutorial_train_measured_s"]["median"] == 10.0
    assert res["tutorial_train_extrapolated_s"]["runs"] == [10.0 + 58 * 3.0] * 3
