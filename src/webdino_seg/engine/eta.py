"""How long a long job will take, said once from its first measured steps, with the faster options where it is long."""

from __future__ import annotations

import time

import torch

WORTH_SAYING_S = 30  # a job shorter than this is not announced
LONG_ON_CPU_S = 10 * 60  # past this, a CPU run is told how to go faster
FASTER = ("faster: a smaller --imgsz (e.g. --imgsz 224 224), a GPU (--device cuda), or the --weights of a smaller "
          "--arch (e.g. webdino-300m instead of a larger one)")  # fmt: skip


def duration(seconds: float) -> str:
    """A rough human duration: '40 s', '12 min', '2 h 40 min'."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class Estimate:
    """Says, once `after` units have been measured, about how long `total` units take, on which device; the clock
    starts when it is made."""

    def __init__(self, what: str, total: int, unit: str, device: torch.device, after: int = 2) -> None:
        self.what, self.total, self.unit, self.device = what, total, unit, device
        self.after = max(1, min(after, total))
        self.done, self.said = 0, False
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> list[str]:
        """Count `n` units done; the lines to say (an estimate, and where it is long on a CPU, the faster options)
        the first time enough are measured, unless the whole job is short; else none."""
        self.done += n
        if self.said or self.done < self.after:
            return []
        self.said = True
        rate = (time.perf_counter() - self.start) / self.done
        total = rate * self.total
        if total < WORTH_SAYING_S:
            return []
        where = {"cpu": "this CPU", "cuda": "this GPU"}.get(self.device.type, f"this {self.device.type} device")
        lines = [f"{self.what}: about {duration(total)} on {where} for {self.total} {self.unit}s "
                 f"({rate:.2f} s/{self.unit}, measured on the first {self.done})"]  # fmt: skip
        if self.device.type == "cpu" and total > LONG_ON_CPU_S:
            lines.append(FASTER)
        return lines
