"""The JSON a benchmark script leaves under benchmarks/measured/, which tools/tables.py makes the docs' tables from."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path


def write_measured(path: Path | None, kind: str, **figures: object) -> None:
    """Write `figures` to `path` (nothing without one) after their kind, this machine and today's date."""
    if path is None:
        return
    record = {
        "format": f"webdino-seg/{kind}",
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU",
        "date": datetime.date.today().isoformat(),
        **figures,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
