"""Where a run's time goes: the wall seconds of each stage, the busy seconds of its parts, and what bound it.

A stage (``startup``, ``cache``, ``epochs``, ``finish``) is timed on the wall clock; stages follow one another,
so they add up to the run's wall time. A part is work inside a stage, timed where it runs: on the host by the
clock, on a GPU by CUDA events read once the stage ends (no extra waits). Parts of one stage can overlap (a
writer thread beside the backbone), so their sum may exceed the stage; the part with the largest share of its
stage's wall time is what bound it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")


class Timings:
    """Stage and part seconds of one run (see the module's docstring); thread-safe for parts."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}
        self.parts: dict[str, dict[str, float]] = {}
        self._events: list[tuple[str, str, torch.cuda.Event, torch.cuda.Event]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name` (added to what the stage already has)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.settle()
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start

    def add(self, stage: str, part: str, seconds: float) -> None:
        """Count `seconds` of busy time for `part` of `stage`."""
        with self._lock:
            parts = self.parts.setdefault(stage, {})
            parts[part] = parts.get(part, 0.0) + seconds

    @contextlib.contextmanager
    def part(self, stage: str, part: str, device: torch.device | None = None) -> Iterator[None]:
        """Time the block as `part` of `stage`: by the clock, or on a CUDA `device` by events around the work it
        queues (read when the stage ends)."""
        if device is not None and device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((stage, part, begin, end))
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, part, time.perf_counter() - start)

    def timed(self, items: Iterable[T], stage: str, part: str) -> Iterator[T]:
        """`items`, the time spent waiting for each counted as `part` of `stage`."""
        iterator = iter(items)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.add(stage, part, time.perf_counter() - start)
            yield item

    def settle(self) -> None:
        """Read the CUDA events recorded so far into their parts (waits for the work they mark)."""
        events, self._events = self._events, []
        if events:
            events[-1][3].synchronize()
        for stage, part, begin, end in events:
            self.add(stage, part, begin.elapsed_time(end) / 1000)

    def wall(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.start

    def bound_by(self) -> tuple[str, str | None, float]:
        """The longest stage, its part with the most busy time where that is at least half the stage (else None),
        and the stage's share of the run's wall time."""
        if not self.stages:
            return "startup", None, 0.0
        stage = max(self.stages, key=self.stages.get)
        parts = self.parts.get(stage, {})
        part = max(parts, key=parts.get) if parts else None
        if part is not None and parts[part] < self.stages[stage] / 2:
            part = None
        return stage, part, self.stages[stage] / max(self.wall(), 1e-9)

    def to_dict(self) -> dict:
        """timings.json: wall seconds, per stage its seconds and parts, what is not in any stage, what bound it."""
        wall = self.wall()
        stage, part, share = self.bound_by()
        return {
            "wall_s": round(wall, 4),
            "stages": {name: self._stage_dict(name) for name in self.stages},
            "outside_stages_s": round(wall - sum(self.stages.values()), 4),
            "bound_by": {"stage": stage, "part": part, "share_of_wall": round(share, 4)},
            "note": "stages follow one another (they add up to wall_s); parts are busy time and can overlap",
        }

    def _stage_dict(self, name: str) -> dict:
        """One stage of timings.json: its seconds and its parts' seconds."""
        parts = {k: round(v, 4) for k, v in self.parts.get(name, {}).items()}
        return {"seconds": round(self.stages[name], 4), "parts": parts}

    def lines(self) -> list[str]:
        """Two log lines: the stages with their parts and the wall time; then what bound the run."""
        return timing_lines(self.to_dict())


def timing_lines(timings: dict) -> list[str]:
    """The two lines `Timings.lines` says, from a timings.json dict."""
    shown = []
    for name, stage in timings["stages"].items():
        parts = sorted(stage["parts"].items(), key=lambda kv: -kv[1])
        inner = ", ".join(f"{k} {v:.1f}" for k, v in parts if v >= 0.05)
        shown.append(f"{name} {stage['seconds']:.1f} s" + (f" ({inner})" if inner else ""))
    total = sum(stage["seconds"] for stage in timings["stages"].values())
    bound = timings["bound_by"]
    where = f"{bound['stage']} / {bound['part']}" if bound["part"] else bound["stage"]
    return [
        f"time: {' · '.join(shown)} = {total:.1f} s of {timings['wall_s']:.1f} s wall",
        f"bound by: {where} ({bound['share_of_wall']:.0%} of the run)",
    ]
