"""Crash safety: SIGKILL mid-epoch and mid-write, a full disk, and a non-finite loss lose nothing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import webdino_seg.engine.trainer as trainer_mod
import webdino_seg.utils.files as io_mod
from conftest import assert_same_metrics, metrics_rows, tiny_settings
from webdino_seg.app.cli import main
from webdino_seg.engine.train import TrainConfig, TrainingError, train
from webdino_seg.models.checkpoint import load_model

KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from webdino_seg import TrainConfig, train

    mode, at, cfg = sys.argv[1], int(sys.argv[2]), TrainConfig(**json.loads(sys.argv[3]))
    calls = {"n": 0}
    if mode == "write":  # die half-way through writing the at-th file torch.save writes
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            calls["n"] += "features" not in obj  # checkpoints only, not the cached feature chunks
            if calls["n"] == at and "features" not in obj:
                f.write(b"half a checkpoint" * 1000)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)
        torch.save = save
    else:  # die at the at-th optimizer step
        real_step = torch.optim.AdamW.step
        def step(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_step(self, *args, **kwargs)
        torch.optim.AdamW.step = step
    train(cfg, log=lambda *_: None)
    """
)


def _cfg(data: Path, out: Path) -> dict:
    return tiny_settings(data, out, imgsz=(56, 56), epochs=3, cache_views=3, seed=5)


@pytest.fixture(scope="module")
def uninterrupted(small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(TrainConfig(**_cfg(small, tmp_path_factory.mktemp("whole") / "run")), log=lambda *_: None)


@pytest.mark.slow
# 3 steps an epoch: at step 7 epoch 1's files are surely written (epoch 2's save waited for them; epoch 2's are in
# the background); 3 files an epoch at first: the 4th is epoch 2's first, killed half-way in the writer thread
@pytest.mark.parametrize(("mode", "at"), [("step", 7), ("write", 4)])
def test_sigkill_then_resume(small: Path, uninterrupted: Path, tmp_path: Path, mode: str, at: int) -> None:
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, mode, str(at), json.dumps(_cfg(small, run))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    checkpoints = sorted(run.glob("*.pth"))
    assert checkpoints, "the first epoch's checkpoints should be there"
    for path in checkpoints:  # everything already in the folder loads
        state = torch.load(path, weights_only=True)
        if path.name not in ("last.pth", "last.prev.pth"):  # resume states, not model checkpoints
            load_model(path)
        assert state["epoch"] >= 1
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_metrics(metrics_rows(run), metrics_rows(uninterrupted))
    assert not list(run.glob(".*.tmp"))  # the half-written temp file was cleaned up


def test_disk_full_stops_cleanly(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if (tmp_path / "run" / "last.pth").exists():  # epoch 1 saved its state; the disk is full from here on
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(io_mod.os, "fsync", fsync)
    lines: list[str] = []
    with pytest.raises(
        OSError, match=r"cannot write .*No space left on device; the previous version, if any, is intact"
    ):
        train(TrainConfig(**_cfg(small, tmp_path / "run")), log=lines.append)
    monkeypatch.setattr(io_mod.os, "fsync", real_fsync)
    run = tmp_path / "run"
    hint = f"stopped by OSError after epoch 1 of 3 (saved in {run / 'last.pth'}); once the cause is fixed, continue"
    assert any(line.startswith(hint) for line in lines), lines
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1
    load_model(run / "best_model_iou.pth")
    assert not list(run.glob(".*.tmp"))


def test_nan_loss_stops_with_epoch_and_step(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_loss = trainer_mod.segmentation_loss
    calls = {"n": 0}

    def loss(logits: torch.Tensor, masks: torch.Tensor, kind: str = "ce", weight: torch.Tensor | None = None):
        calls["n"] += 1
        value, pred = real_loss(logits, masks, kind, weight)
        if calls["n"] == 3 + 1 + 2:  # epoch 1: 3 train + 1 valid batch; then epoch 2, step 2
            value = value * float("nan")
        return value, pred

    monkeypatch.setattr(trainer_mod, "segmentation_loss", loss)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, step 2.*last\.pth \(epoch 1\)"):
        train(TrainConfig(**_cfg(small, tmp_path / "run")), log=lambda *_: None)
    state = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["head"].values())
