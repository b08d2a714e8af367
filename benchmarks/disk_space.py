"""The disk space a new `.venv` takes, step by step as the Makefile installs it: torch, then webdino-seg and its
dependencies (`make quickstart`), then the test extras (`make test`), for each build of torch asked for.

Each build goes into its own new virtual environment in a temporary folder (removed afterwards); sizes are the disk
blocks its files take, as `du` counts them.

    python benchmarks/disk_space.py [--build "CPU build=torch==2.13.0" --build "CUDA build=torch==2.14.1"]
        [--json benchmarks/measured/disk-space.json]

The JSON is what `tools/tables.py` makes the table in docs/getting-started.md from.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from measured_json import write_measured

REPO = Path(__file__).resolve().parents[1]
STEPS = ("torch", "webdino-seg", "test extras")


def disk_bytes(folder: Path) -> int:
    """The disk blocks of every file under `folder` (each hard-linked file once), in bytes."""
    seen, total = set(), 0
    for root, _, files in os.walk(folder):
        for name in files:
            info = os.lstat(os.path.join(root, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def one_build(spec: str, work: Path) -> dict:
    """A new venv in `work` grown step by step: its size after each, and the torch version it got."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    sizes = {}
    for step, args in zip(STEPS, ([*spec.split()], ["-e", str(REPO)], ["-e", f"{REPO}[dev]"]), strict=True):
        subprocess.run([*pip, *args], check=True)
        sizes[step] = disk_bytes(venv)
        print(f"  {step}: {sizes[step] / 1e9:.2f} GB", flush=True)
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    openvino = disk_bytes(next((venv / "lib").glob("python*/site-packages/openvino"), venv / "none"))
    shutil.rmtree(venv)
    return {"spec": spec, "torch": version, "bytes": sizes, "openvino_bytes": openvino}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--build",
        action="append",
        help='LABEL=PIP SPEC, e.g. "CPU build=torch==2.13.0" (default: the CPU and the CUDA build on this disk)',
    )
    parser.add_argument("--json", type=Path, help="also write the figures here (tools/tables.py reads them)")
    args = parser.parse_args()
    builds = args.build or ["CPU build=torch==2.13.0", "CUDA build=torch==2.14.1"]
    results = {}
    for entry in builds:
        label, _, spec = entry.partition("=")
        print(f"{label} ({spec}):", flush=True)
        with tempfile.TemporaryDirectory() as work:
            results[label] = one_build(spec, Path(work))
    platform_name = f"{platform.system()} {platform.machine()}"
    write_measured(args.json, "disk-space", python=platform.python_version(), platform=platform_name, builds=results)


if __name__ == "__main__":
    main()
