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
    argv = [
        "benchmark",
        "--arch",
        "webdino-tiny",
        "--imgsz",
        "56",
        "56",
        "--device",
        "cpu",
        "--quick",
        "--video",
        str(test_video),
        "--data",
        str(tiny_data),
        "--epochs",
        "3",
        "--tutorial-epochs",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    table = captured.out
    assert "  ours_backbone_img_s_b1: " in captured.err  # each figure is logged as soon as it is measured
    for row in (
        "training, 3 epochs, seconds (tutorial: extrapolated*)",
        "backbone images/s, batch 1",
        "video end to end",
        "median [min-max] of 3 runs",
        "attention: tutorial math",
    ):
        assert row in table, table
    figures = json.loads(out.read_text())
    for key in ("ours_train_s", "tutorial_train_extrapolated_s", "ours_video_fps", "ours_backbone_img_s_b1"):
        assert len(figures[key]["runs"]) == 3 and figures[key]["min"] <= figures[key]["median"] <= figures[key]["max"]
    assert figures["runtime"]["device"] == "cpu" and figures["runtime"]["torch"] == torch.__version__
    assert figures["sdpa"]["tutorial"] == "math" and figures["sdpa"]["ours"] != "math"
    assert set(figures["ours_train_timings"]["stages"]) == {"startup", "cache", "epochs", "finish"}
    assert 0 <= figures["video_foreground"] <= 1 and "% foreground)" in table  # what the drawing cost depends on
    assert "our training run, bound by: " in table and "whole model frames/s, batch 1, 56x56" in table


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
    common = {
        "arch": "webdino-tiny",
        "weights": "random",
        "imgsz": (56, 56),
        "epochs": 3,
        "batch": 2,
        "workers": 0,
        "cache_views": 2,
    }
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
    (run / "timings.json").write_text(json.dumps({"wall_s": 30.0, "stages": {}}))
    calls = iter([(999.0, run), (999.0, run)] + [(30.0, run), (10.0, run)] * 3)  # warm-ups, then ours, tutorial x3
    monkeypatch.setattr(bench, "_timed_train", lambda cfg, device, mode: next(calls))
    res = bench.bench_training(
        "d", "webdino-tiny", (56, 56), torch.device("cpu"), epochs=60, tutorial_epochs=2, views=4, repeats=3
    )
    assert res["ours_train_s"]["median"] == 30.0 and res["tutorial_train_measured_s"]["median"] == 10.0
    assert res["tutorial_train_extrapolated_s"]["runs"] == [10.0 + 58 * 3.0] * 3
    assert res["ours_train_timings"] == {"wall_s": 30.0, "stages": {}}  # our last run's own accounting


class _SlowStart(torch.nn.Module):
    """A stand-in backbone whose first two passes are slow, as first calls are (kernels, thread pools, caches)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        import time

        self.calls += 1
        time.sleep(0.3 if self.calls <= 2 else 0.001)
        return x


def test_no_warm_up_lands_inside_a_timed_repetition() -> None:
    model = _SlowStart()
    res = bench.bench_backbone(model, (14, 14), torch.device("cpu"), batches=(1,), iters=1, repeats=3, recipe="ours")
    figure = res["ours_backbone_img_s_b1"]
    assert model.calls == bench.WARMUP + 3 and len(figure["runs"]) == 3
    assert figure["min"] > 100, figure  # a slow first pass timed would show as ~3 images/s
    values = iter([50.0, 40.0, 1.0, 1.1, 1.2])
    assert bench.repeat(lambda: next(values), 3)["runs"] == [1.0, 1.1, 1.2]


def test_a_spread_wider_than_its_median_is_flagged_not_turned_into_a_speed_up() -> None:
    steady, wild = bench.summarise([3.2, 3.3, 3.1]), bench.summarise([3.2, 55.1, 3.0])
    assert steady["reliable"] and not wild["reliable"]
    res = {
        "runtime": {"device": "cpu", "torch": "x", "cuda": None, "amp_dtype": "None"},
        "arch": "webdino-tiny",
        "imgsz": [112, 112],
        "sdpa": {"tutorial": "math", "ours": "flash"},
        "repeats": 3,
        "quick": True,
        "batches": [1, 2],
        "tutorial_backbone_img_s_b1": wild,
        "ours_backbone_img_s_b1": steady,
        "tutorial_backbone_img_s_b2": steady,
        "ours_backbone_img_s_b2": bench.summarise([6.4, 6.5, 6.6]),
    }
    table = bench.format_table(res).splitlines()
    row1 = next(line for line in table if "batch 1" in line)
    row2 = next(line for line in table if "batch 2" in line)
    assert row1.rstrip().endswith("unreliable") and "x" not in row1.split("]")[-1]
    assert row2.rstrip().endswith("2.0x")
    assert any(line.startswith("unreliable: a spread") for line in table)
