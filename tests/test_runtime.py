"""The device and precision policy and the GPU data path, tested where a CPU can show them."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import webdino_seg.engine.distributed as distributed
import webdino_seg.engine.features as features_mod
import webdino_seg.utils.runtime as runtime
from conftest import FIXTURES, TINY, assert_bf16_close, make_subset, metrics_rows, tiny_config, tiny_train_cli
from webdino_seg import create_backbone, create_model
from webdino_seg.engine.features import plan_store
from webdino_seg.engine.train import train

GIB = 2**30


# --- precision ----------------------------------------------------------------------------------


def test_bf16_backbone_stays_close_to_fp32() -> None:
    """A frozen backbone kept in bf16 (as on a GPU) stays close to fp32 (CPU bf16 kernels)."""
    assert_bf16_close("cpu")


def test_frozen_backbone_is_cast_once_where_autocast_would_run(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("webdino-tiny", seed=0)
    runtime.prepare_model(model, torch.device("cpu"), amp=True)  # CPU: exact fp32, nothing cast
    assert model.backbone.patch_embed.proj.weight.dtype == torch.float32
    monkeypatch.setattr(runtime, "amp_dtype", lambda device, enabled=True: torch.bfloat16 if enabled else None)
    runtime.prepare_model(model, torch.device("cpu"), amp=True)
    assert {p.dtype for p in model.backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.head.parameters()} == {torch.float32}  # the head trains in fp32 + autocast
    assert model.features(torch.randn(1, 3, 28, 28)).dtype == torch.bfloat16  # images follow the backbone
    tuned = create_model("webdino-tiny", seed=0, fine_tune=True)
    runtime.prepare_model(tuned, torch.device("cpu"), amp=True)
    assert tuned.backbone.patch_embed.proj.weight.dtype == torch.float32  # fine-tuning keeps fp32 weights


@pytest.mark.parametrize(("capability", "native"), [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_only_where_the_gpu_has_it_natively(
    monkeypatch: pytest.MonkeyPatch, capability: tuple, native: bool
) -> None:
    """V100 (7.0) and T4 / RTX 20xx (7.5) emulate bf16, and torch.cuda.is_bf16_supported() says yes for them."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.version, "hip", None)
    runtime._bf16_supported.cache_clear()
    try:
        assert (runtime.amp_dtype(torch.device("cuda", 0)) == torch.bfloat16) is native
    finally:
        runtime._bf16_supported.cache_clear()


def test_no_bf16_on_a_gpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_bf16_supported", lambda device: False)
    assert runtime.amp_dtype(torch.device("cuda")) is None  # fp32 rather than a dtype the GPU lacks
    monkeypatch.setattr(runtime, "_bf16_supported", lambda device: True)
    assert runtime.amp_dtype(torch.device("cuda")) == torch.bfloat16
    assert runtime.amp_dtype(torch.device("cuda"), enabled=False) is None
    assert runtime.amp_dtype(torch.device("cpu")) is None


def test_positional_embedding_is_resized_once_per_size() -> None:
    model = create_backbone("webdino-300m", weights=FIXTURES / "tiny_official.pth", **TINY).eval()
    model.requires_grad_(False)
    calls = []
    real = model._interpolate_pos_encoding
    model._interpolate_pos_encoding = lambda *a: calls.append(a) or real(*a)
    x = torch.randn(1, 3, 98, 154)
    with torch.no_grad():
        first = model.forward_features(x)["x_norm_patchtokens"]
        again = model.forward_features(x)["x_norm_patchtokens"]
        assert len(calls) == 1 and torch.equal(first, again)
        with torch.no_grad():
            model.pos_embed.mul_(2)  # new weights: the cached resize must not be used
        changed = model.interpolate_pos_encoding(98, 154, torch.float32)
    assert len(calls) == 2 and torch.allclose(changed, real(98, 154, torch.float32))


# --- cache planning -------------------------------------------------------------------------------


def test_cache_planning_counts_dtype_masks_and_working_memory() -> None:
    items, shape, masks = 100, (1024, 46, 46), (644, 644)
    features_bf16 = items * 1024 * 46 * 46 * 2
    mask_bytes = items * 644 * 644
    gpu = torch.device("cuda")
    plan = plan_store(items, shape, masks, gpu, free={"cuda": 80 * GIB, "cpu": 64 * GIB})
    assert plan.kind == "cuda" and plan.dtype == torch.bfloat16 and plan.nbytes == features_bf16 + mask_bytes
    # a batch of 32 float32 images and ~22 bf16 activations of the 46x46+1 token sequence, as documented
    assert plan.working_bytes == 32 * (3 * 644 * 644 * 4 + 22 * (46 * 46 + 1) * 1024 * 2)
    # it would fit in half the GPU without the extraction's own memory, but not with it; exactly half fits
    tight = 2 * (plan.nbytes + plan.working_bytes)
    assert plan_store(items, shape, masks, gpu, free={"cuda": tight, "cpu": 64 * GIB}).kind == "cuda"
    assert plan_store(items, shape, masks, gpu, free={"cuda": tight - 1, "cpu": 64 * GIB}).kind == "cpu"
    cpu_on_gpu_run = plan_store(items, shape, masks, gpu, free={"cuda": 1 * GIB, "cpu": 64 * GIB})
    assert cpu_on_gpu_run.dtype == torch.bfloat16  # half the RAM of float32 on a CUDA run
    cpu_run = plan_store(items, shape, masks, torch.device("cpu"), free={"cpu": 64 * GIB})
    assert cpu_run.kind == "cpu" and cpu_run.dtype == torch.float32 and cpu_run.nbytes == 2 * features_bf16 + mask_bytes
    disk = plan_store(items, shape, masks, torch.device("cpu"), free={"cpu": 1 * GIB, "disk": 100 * GIB})
    assert disk.kind == "disk" and disk.dtype == torch.bfloat16
    assert plan_store(items, shape, masks, torch.device("cpu"), limit_gb=0.1, free={"cpu": 64 * GIB}).kind == "disk"
    # a head reading 4 layers caches 4x the width; extraction's activations keep the backbone's own width, with
    # the 4 layers kept and concatenated on top (not 4x everything, as when the cached width was taken)
    four = plan_store(items, (4 * 1024, 46, 46), masks, gpu, free={"cuda": 80 * GIB, "cpu": 64 * GIB}, width=1024)
    assert four.working_bytes == 32 * (3 * 644 * 644 * 4 + 28 * (46 * 46 + 1) * 1024 * 2)
    assert four.nbytes == 4 * features_bf16 + mask_bytes


def test_a_disk_cache_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"needs 4\.4 GiB.*more than the 1\.0 GiB free on disk at .*--no-cache") as err:
        plan_store(
            1000, (1024, 46, 46), (644, 644), torch.device("cpu"), disk=tmp_path, free={"cpu": 1 * GIB, "disk": 1 * GIB}
        )
    assert err.value.errno == errno.ENOSPC


# --- data path ------------------------------------------------------------------------------------


def test_loaders_are_built_once_and_keep_their_workers(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    data = make_subset(prepared, tmp_path / "data", 6, 2)
    made = []
    real_init = torch.utils.data.DataLoader.__init__

    def init(self, *args, **kwargs):
        made.append(kwargs.get("persistent_workers", False))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", init)
    train(tiny_config(data, tmp_path / "cached", epochs=3, cache_views=3, workers=1), log=lambda *_: None)
    assert len(made) == 2  # one extraction loader per split, for all 3 views
    made.clear()
    train(tiny_config(data, tmp_path / "live", epochs=3, cache=False, workers=1), log=lambda *_: None)
    assert made == [True, True]  # train and valid, for all 3 epochs, workers kept alive


def test_extraction_follows_no_amp(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    data = make_subset(prepared, tmp_path / "data", 2, 1)
    seen = []
    real = features_mod.RunContext.autocast  # the extraction (and every other step of the run) asks its context
    monkeypatch.setattr(features_mod.RunContext, "autocast", lambda self: seen.append(self.amp) or real(self))
    train(tiny_config(data, tmp_path / "r", epochs=1, amp=False), log=lambda *_: None)
    assert seen and not any(seen)


def test_nccl_only_for_cuda_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        distributed.dist,
        "init_process_group",
        lambda backend, timeout: chosen.append((backend, timeout.total_seconds())),
    )
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    for device in ("cpu", "auto", "cuda"):
        distributed.setup(device)
    assert chosen == [("gloo", 1800), ("nccl", 1800), ("nccl", 1800)]
    monkeypatch.setenv("WEBDINO_SEG_DIST_TIMEOUT_S", "7200")  # a knob for long rank-0 work on slow disks
    distributed.setup("cpu")
    assert chosen[-1] == ("gloo", 7200)


@pytest.mark.slow
def test_torchrun_fine_tune_runs_several_steps(prepared: Path, tmp_path: Path) -> None:
    """Two gloo processes fine-tuning: every trainable parameter takes part in every step (DDP's check)."""
    data = make_subset(prepared, tmp_path / "data", 8, 2)
    args = tiny_train_cli(data, tmp_path / "ddp", "--fine-tune", "--epochs", "2", "--batch", "2")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "webdino_seg",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(metrics_rows(tmp_path / "ddp")) == 2
