"""GPU paths, run by `pytest -m cuda` on a machine with a CUDA GPU (skipped elsewhere) and by benchmarks/gpu.sh."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from conftest import assert_bf16_close, assert_same_metrics, make_subset, metrics_rows, tiny_config, tiny_train_cli
from webdino_seg.app.cli import main
from webdino_seg.engine.train import train
from webdino_seg.models.checkpoint import load_model
from webdino_seg.utils.overlay import overlay

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def data(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_subset(prepared, tmp_path_factory.mktemp("cuda") / "data", 16, 4)


def test_bf16_backbone_on_cuda_matches_fp32() -> None:
    assert_bf16_close("cuda", batch=4)


def test_training_steps_with_the_cache_on_the_gpu_and_in_cpu_memory(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs: list[str] = []
    gpu = metrics_rows(train(tiny_config(data, tmp_path / "gpu", device="cuda", epochs=3), log=logs.append))
    assert any("in cuda" in line for line in logs), logs
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1, 1))  # no room on the GPU
    logs.clear()
    cpu = metrics_rows(train(tiny_config(data, tmp_path / "cpu", device="cuda", epochs=3), log=logs.append))
    assert any("bfloat16 in cpu" in line for line in logs), logs
    assert_same_metrics(gpu, cpu, rel=1e-3)  # the same bf16 features, only stored elsewhere


def test_video_on_cuda_draws_the_masks(data: Path, test_video: Path, tmp_path: Path) -> None:
    run = train(
        tiny_config(data, tmp_path / "run", device="cuda", imgsz=(224, 224), epochs=4, lr=1e-2), log=lambda *_: None
    )
    out = tmp_path / "out.mp4"
    ckpt = run / "best_model_iou.pth"
    assert (
        main(
            [
                "video",
                "--input",
                str(test_video),
                "--model",
                str(ckpt),
                "--device",
                "cuda",
                "--out",
                str(out),
                "--max-frames",
                "16",
            ]
        )
        == 0
    )
    from webdino_seg.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(ckpt, device="cuda")
    with av.open(str(test_video)) as a, av.open(str(out)) as b:
        pairs = zip(itertools.islice(a.decode(video=0), 16), b.decode(video=0), strict=True)
        for frame_in, frame_out in pairs:
            src, got = frame_in.to_ndarray(format="rgb24"), frame_out.to_ndarray(format="rgb24")
            mask = predictor.predict(src)
            expected = overlay(src, mask)[80:].astype(np.float32)
            assert np.abs(got[80:].astype(np.float32) - expected).mean() < 6
    _, meta = load_model(ckpt)
    assert meta["imgsz"] == [224, 224]


def test_one_process_nccl_run(data: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "1",
        "-m",
        "webdino_seg",
        *tiny_train_cli(data, tmp_path / "ddp", "--device", "cuda"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(metrics_rows(tmp_path / "ddp")) == 1


def test_benchmark_quick_table_on_cuda(data: Path, test_video: Path, capsys) -> None:
    argv = [
        "benchmark",
        "--arch",
        "webdino-tiny",
        "--imgsz",
        "224",
        "224",
        "--device",
        "cuda",
        "--quick",
        "--video",
        str(test_video),
        "--data",
        str(data),
        "--epochs",
        "3",
        "--tutorial-epochs",
        "1",
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    print(table)
    assert "attention: tutorial math" in table and "training, 3 epochs" in table


def test_a_training_step_waits_for_the_gpu_at_most_once() -> None:
    """CUDA's sync debug mode warns at every host-device synchronisation; a step (cached features in, loss value
    and predictions counted on the GPU) may cause one: the loss value it returns."""
    import warnings

    from webdino_seg.engine.train import train_step
    from webdino_seg.models.heads import SimpleDecoder
    from webdino_seg.utils.metrics import ConfusionMatrix
    from webdino_seg.utils.runtime import RunContext

    device = torch.device("cuda")
    head = SimpleDecoder(64, 2).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    features = torch.randn(4, 64, 8, 8, device=device)
    masks = torch.randint(0, 2, (4, 8, 8), device=device)
    cm = ConfusionMatrix(2, device)
    context = RunContext(device)
    train_step(head, optimizer, (features,), masks, context=context)  # warm-up: lazy initialisations may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, pred = train_step(head, optimizer, (features,), masks, context=context)
            cm.update(pred, masks)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]
