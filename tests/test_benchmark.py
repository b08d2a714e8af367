"""The benchmark command runs both recipes and prints every figure (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from webdino_seg.cli import main


def test_benchmark_prints_the_table(test_video: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert (
        main(
            [
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
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    for row in ("training, s per epoch", "training, 60 epochs", "backbone images/s, batch 1", "video end to end"):
        assert row in table
    figures = json.loads(out.read_text())
    for key in (
        "tutorial_schedule_s",
        "ours_schedule_s",
        "tutorial_video_fps",
        "ours_video_fps",
        "ours_backbone_img_s_b1",
        "tutorial_infer_ms_b1",
    ):
        assert figures[key] > 0, key
