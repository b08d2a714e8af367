"""Training as events: the Trainer says epoch_start, step, epoch_end, checkpoint and stop; what happens around
the epochs subscribes (and so can a user's object), and `resume(run, changes)` continues a stopped run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import webdino_seg as ws
from conftest import assert_same_metrics, metrics_rows, tiny_config

SETTINGS = {"epochs": 2, "imgsz": (56, 56), "cache_views": 2}


class Recorder(ws.Callback):
    """Every event as (name, epoch, what it carries)."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_epoch_start(self, event: ws.Event) -> None:
        self.seen.append(("epoch_start", event.epoch))

    def on_step(self, event: ws.Event) -> None:
        self.seen.append(("step", event.epoch, event.step, event.loss))

    def on_epoch_end(self, event: ws.Event) -> None:
        self.seen.append(("epoch_end", event.epoch, event.row, event.improved))

    def on_checkpoint(self, event: ws.Event) -> None:
        self.seen.append(("checkpoint", event.epoch, event.files))

    def on_stop(self, event: ws.Event) -> None:
        self.seen.append(("stop", event.epoch, event.error))


def test_a_run_says_its_events_in_order_with_what_each_carries(small: Path, tmp_path: Path) -> None:
    rec = Recorder()
    run = ws.train(tiny_config(small, tmp_path / "run", **SETTINGS), log=lambda *_: None, callbacks=[rec])
    names = [e[0] for e in rec.seen]
    steps = names.count("step") // 2
    one = ["epoch_start", *["step"] * steps, "epoch_end", "checkpoint"]
    assert steps >= 1 and names == [*one, *one, "stop"]
    rows = [e[2] for e in rec.seen if e[0] == "epoch_end"]
    assert [{k: str(v) for k, v in row.items()} for row in rows] == metrics_rows(run)  # the rows metrics.csv holds
    for epoch in (1, 2):
        numbers = [e[2] for e in rec.seen if e[0] == "step" and e[1] == epoch]
        assert numbers == list(range(1, steps + 1))
    assert all(e[3] > 0 for e in rec.seen if e[0] == "step")
    first_end, first_checkpoint = rec.seen[steps + 1], rec.seen[steps + 2]
    assert first_end[3] == ("loss", "iou")  # the first epoch beats infinity on both
    assert first_checkpoint[2] == ("best_model_loss.pth", "best_model_iou.pth", "last.pth", "metrics.csv")
    assert all((run / name).is_file() for e in rec.seen if e[0] == "checkpoint" for name in e[2])
    assert rec.seen[-1] == ("stop", 2, None)


def test_ctrl_c_in_a_callback_says_stop_and_resume_continues_as_if_uninterrupted(small: Path, tmp_path: Path) -> None:
    whole = ws.train(tiny_config(small, tmp_path / "whole", **SETTINGS), log=lambda *_: None)

    class StopAfterEpoch1(Recorder):
        def on_epoch_end(self, event: ws.Event) -> None:
            super().on_epoch_end(event)
            raise KeyboardInterrupt

    rec, lines = StopAfterEpoch1(), []
    with pytest.raises(KeyboardInterrupt):
        ws.train(tiny_config(small, tmp_path / "run", **SETTINGS), log=lines.append, callbacks=[rec])
    assert rec.seen[-1][:2] == ("stop", 1) and isinstance(rec.seen[-1][2], KeyboardInterrupt)
    assert "checkpoint" not in [e[0] for e in rec.seen]  # the user's callback ran before the checkpoint was said
    assert any(line.startswith("interrupted after epoch 1 of 2") for line in lines), lines
    assert len(metrics_rows(tmp_path / "run")) == 1  # the run's own subscribers came first: epoch 1 is kept

    again = Recorder()
    run = ws.resume(tmp_path / "run", log=lambda *_: None, callbacks=[again])
    said = [e[:2] for e in again.seen if e[0] != "step"]
    assert said == [("epoch_start", 2), ("epoch_end", 2), ("checkpoint", 2), ("stop", 2)]
    assert_same_metrics(metrics_rows(run, timings=False), metrics_rows(whole, timings=False))

    more = ws.resume(run, {"epochs": 3}, log=lambda *_: None)  # changes: what `train --resume RUN --epochs 3` gives
    assert len(metrics_rows(more)) == 3


def test_a_callback_method_that_is_no_event_is_refused_before_anything_is_made(small: Path, tmp_path: Path) -> None:
    class Typo:
        def on_epoch_ned(self, event: ws.Event) -> None:  # sic
            pass

    with pytest.raises(ValueError, match=r"on_epoch_ned is no training event \(known: on_epoch_start, on_step"):
        ws.train(tiny_config(small, tmp_path / "run", **SETTINGS), log=lambda *_: None, callbacks=[Typo()])
    assert not (tmp_path / "run").exists()


def test_the_epoch_loop_knows_none_of_its_subscribers() -> None:
    """The Trainer emits; it imports no checkpoint writing, TensorBoard, estimate or subscriber module, so
    adding one touches only callbacks.py and the list in train.py."""
    tree = ast.parse((Path(ws.__file__).parent / "engine" / "trainer.py").read_text())
    imported = set()  # as package-relative names: engine.events, utils.files, ...
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ["engine", ""][node.level - 1] + (f".{node.module}" if node.module else "")
            base = base.strip(".")
            imported |= {base} if node.module else {f"{base}.{a.name}" for a in node.names}
    around = {"engine.callbacks", "engine.board", "engine.eta", "models.checkpoint", "engine.train"}
    assert "engine.events" in imported and "engine.distributed" in imported, imported
    assert not imported & around, imported
