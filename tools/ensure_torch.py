"""Install torch into a virtual environment that has none, failing fast where its package index cannot be reached.

    python tools/ensure_torch.py --python .venv/bin/python torch>=2.4 --index-url https://download.pytorch.org/whl/cpu

The arguments after the options are what `pip install` gets (the Makefile's TORCH_PIP). Before pip runs, an
`--index-url` is asked for torch's page with a short timeout: where it does not answer, the script says so within
about 30 seconds, with the TORCH_PIP to use instead, rather than letting pip retry for minutes. Uses the standard
library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.error
import urllib.request

HINT = (
    "Install torch from a source you can reach, e.g.\n"
    '  make quickstart TORCH_PIP="torch==2.5.1"                      (PyPI: on Linux the CUDA build, several GB)\n'
    '  make quickstart TORCH_PIP="/path/to/torch-<version>-<tags>.whl"  (a wheel file you have)\n'
    "or install torch into .venv yourself first (.venv/bin/pip install ...); make then keeps it."
)


def has_torch(python: str) -> bool:
    """Whether `python` can import torch."""
    return subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0


def index_url(pip_args: list[str]) -> str | None:
    """The `--index-url` among pip's arguments (either spelling), or None."""
    for i, arg in enumerate(pip_args):
        if arg in ("--index-url", "-i") and i + 1 < len(pip_args):
            return pip_args[i + 1]
        if arg.startswith("--index-url="):
            return arg.split("=", 1)[1]
    return None


def probe(url: str, timeout: float, tries: int = 2) -> str | None:
    """Ask the index for torch's page; None where it answers, else why not."""
    page = url.rstrip("/") + "/torch/"
    reason = ""
    for _ in range(tries):
        try:
            with urllib.request.urlopen(page, timeout=timeout) as response:
                response.read(1)
            return None
        except urllib.error.HTTPError as e:  # an index with torch answers 200 for its page
            return f"HTTP {e.code} for {page}"
        except (OSError, ValueError) as e:
            reason = str(getattr(e, "reason", e)) or type(e).__name__
    return reason


def main(argv: list[str] | None = None) -> int:
    """Install torch with pip unless `--python` already imports it; 0 on success, 1 with a hint otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the environment's python")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per try to reach the index (2 tries)")
    parser.add_argument("pip_args", nargs=argparse.REMAINDER, help="what pip install gets (TORCH_PIP)")
    args = parser.parse_args(argv)
    if has_torch(args.python):
        return 0
    pip_args = [a for a in args.pip_args if a != "--"]
    url = index_url(pip_args)
    if url and url.startswith(("http://", "https://")):
        start = time.monotonic()
        reason = probe(url, args.timeout)
        if reason is not None:
            print(
                f"error: cannot reach {url} ({reason}; gave up after {time.monotonic() - start:.0f} s), "
                f'so torch cannot be installed with TORCH_PIP="{" ".join(pip_args)}".\n{HINT}',
                file=sys.stderr,
            )
            return 1
    print(
        f"installing torch: pip install {' '.join(pip_args)}  (CPU build: about 0.9 GB installed; "
        "CUDA build: about 5.5 GB)",
        flush=True,
    )
    cmd = [args.python, "-m", "pip", "install", "--retries", "2", "--timeout", "30", "--progress-bar", "on", *pip_args]
    if subprocess.run(cmd).returncode != 0:
        print(f'error: pip could not install torch from TORCH_PIP="{" ".join(pip_args)}".\n{HINT}', file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
