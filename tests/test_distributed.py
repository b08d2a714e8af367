"""torchrun with 2 CPU processes (gloo) trains to the same result as a single process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_subset, metrics_rows, tiny_config, tiny_train_cli
from webdino_seg.engine.train import train

SETTINGS = {"epochs": 3, "lr": 1e-3, "batch": 4, "cache_views": 3, "seed": 11}


@pytest.mark.slow
@pytest.mark.parametrize(("cache", "head"), [(True, "simple"), (False, "simple"), (True, "linear4")])
def test_two_processes_match_one(prepared: Path, tmp_path: Path, cache: bool, head: str) -> None:
    """linear4's BatchNorm takes the statistics of the whole batch across processes, as one process does."""
    data = make_subset(prepared, tmp_path / "data", 9, 3)  # odd sizes: uneven shards, a 1-image last batch
    settings = {"imgsz": (56, 56), "cache": cache, "head": head, **SETTINGS}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train_args = tiny_train_cli(data, tmp_path / "ddp", *([] if cache else ["--no-cache"]), **settings)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "webdino_seg",
        *train_args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(tiny_config(data, tmp_path / "one", **settings), log=lambda *_: None)
    assert len(metrics_rows(single)) == 3
    _same_metrics(tmp_path / "ddp", single)
    ha = torch.load(tmp_path / "ddp" / "final_model.pth", weights_only=True)["head"]
    hb = torch.load(single / "final_model.pth", weights_only=True)["head"]
    for k in ha:  # gradients summed in another order; AdamW's 1/sqrt(v) magnifies that on near-zero gradients
        torch.testing.assert_close(ha[k], hb[k], atol=1e-4, rtol=1e-3)
    assert not (tmp_path / "ddp-2").exists()  # only rank 0 made a run folder


def _torchrun(nproc: int, train_args: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        *extra,
        "-m",
        "webdino_seg",
        *train_args,
    ]


def _same_metrics(run: Path, single: Path) -> None:
    ddp_rows, one_rows = metrics_rows(run), metrics_rows(single)
    assert len(ddp_rows) == len(one_rows)
    for a, b in zip(ddp_rows, one_rows, strict=True):
        for key in a:
            if key != "seconds":
                assert abs(float(a[key]) - float(b[key])) < 1e-5, (key, a[key], b[key])


def _isolated(shm_size: str, cmd: list[str], shm_list: Path) -> list[str]:
    """`cmd` in its own mount namespace with a fresh /dev/shm of `shm_size` (as a container or another machine
    has), listing what /dev/shm holds afterwards into `shm_list`."""
    quoted = " ".join(f"'{c}'" for c in cmd)
    script = (
        f"mount -t tmpfs -o size={shm_size} tmpfs /dev/shm && {quoted}; code=$?; ls -A /dev/shm > "
        f"'{shm_list}'; exit $code"
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]


def _can_isolate() -> bool:
    import shutil

    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True,
    )
    return probe.returncode == 0


ISOLATE = pytest.mark.skipif(not _can_isolate(), reason="needs root and unshare to give processes their own /dev/shm")


@pytest.mark.slow
@ISOLATE
def test_two_machines_with_their_own_dev_shm_train_as_one_process(prepared: Path, tmp_path: Path) -> None:
    """Two 'machines' (separate /dev/shm, as on two nodes) of one process each: the features each machine shares
    in its /dev/shm are complete on both, the run equals one process, and no file is left in either /dev/shm."""
    import socket

    data = make_subset(prepared, tmp_path / "data", 9, 3)
    settings = {"imgsz": (56, 56), **SETTINGS}
    train_args = tiny_train_cli(data, tmp_path / "ddp", **settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node in (0, 1):
        cmd = _torchrun(
            1,
            train_args,
            "--nnodes",
            "2",
            "--node-rank",
            str(node),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
        )
        procs.append(
            subprocess.Popen(
                _isolated("256m", cmd, tmp_path / f"shm{node}.txt"),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    single = train(tiny_config(data, tmp_path / "one", **settings), log=lambda *_: None)
    _same_metrics(tmp_path / "ddp", single)
    assert [(tmp_path / f"shm{n}.txt").read_text() for n in (0, 1)] == ["", ""]


@pytest.mark.slow
@ISOLATE
def test_a_small_dev_shm_falls_back_to_files_and_says_so(prepared: Path, tmp_path: Path) -> None:
    data = make_subset(prepared, tmp_path / "data", 9, 3)
    settings = {"imgsz": (56, 56), **SETTINGS}
    cmd = _torchrun(2, tiny_train_cli(data, tmp_path / "ddp", **settings), "--standalone")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run(
        _isolated("64k", cmd, tmp_path / "shm.txt"), capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "/dev/shm has 0 MiB free, the shared feature cache needs" in proc.stderr
    single = train(tiny_config(data, tmp_path / "one", **settings), log=lambda *_: None)
    _same_metrics(tmp_path / "ddp", single)
    assert not list((tmp_path / "tmp").glob("webdino-seg-*"))  # the mapped files are gone


@pytest.mark.slow
def test_more_processes_than_valid_images(prepared: Path, tmp_path: Path) -> None:
    data = make_subset(prepared, tmp_path / "data", 4, 2)
    settings = {"imgsz": (56, 56), **SETTINGS}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        _torchrun(3, tiny_train_cli(data, tmp_path / "ddp", **settings), "--standalone"),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_metrics(tmp_path / "ddp", train(tiny_config(data, tmp_path / "one", **settings), log=lambda *_: None))


FINE_TUNE_DDP = """
import torch, torch.distributed as dist
from webdino_seg.models.builder import create_model
dist.init_process_group("gloo")
torch.manual_seed(0)
model = create_model("dinov3-tiny", weights="random", fine_tune=True, local_cls_norm=True).train()
assert hasattr(model.backbone, "local_cls_norm")
net = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
for step in range(3):
    opt.zero_grad()
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
print("3 steps")
"""


@pytest.mark.slow
def test_fine_tuning_a_backbone_with_a_pretraining_only_part_under_ddp(tmp_path: Path) -> None:
    script = tmp_path / "fine_tune.py"
    script.write_text(FINE_TUNE_DDP)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "3 steps" in proc.stdout, proc.stderr[-2000:]


SLOW_FINISH = """
import sys, time
import webdino_seg.engine.train as train_mod
from webdino_seg.app.cli import main

real = train_mod.finish_run

def slow_finish(*args, **kwargs):
    time.sleep(8)  # longer than the process group's 3 s timeout
    return real(*args, **kwargs)

train_mod.finish_run = slow_finish
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_finish_longer_than_the_collective_timeout_completes(prepared: Path, tmp_path: Path) -> None:
    data = make_subset(prepared, tmp_path / "data", 4, 2)
    script = tmp_path / "slow_finish.py"
    script.write_text(SLOW_FINISH)
    train_args = tiny_train_cli(data, tmp_path / "ddp", imgsz=(56, 56), epochs=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WEBDINO_SEG_DIST_TIMEOUT_S": "3"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        *train_args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "final_model.pth").exists() and (tmp_path / "ddp" / "valid_preds").is_dir()


@pytest.mark.slow
def test_resume_under_torchrun_cleans_stale_files_once(prepared: Path, tmp_path: Path) -> None:
    data = make_subset(prepared, tmp_path / "data", 4, 2)
    run = train(tiny_config(data, tmp_path / "run", imgsz=(56, 56), epochs=1), log=lambda *_: None)
    for i in range(20000):  # half-written files a stopped run left: every process deleting them raced
        (run / f".stale{i}.pth.tmp").write_bytes(b"x")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "webdino_seg",
        "train",
        "--resume",
        str(run),
        "--epochs",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(run.glob(".*.tmp")) and len(metrics_rows(run)) == 2
