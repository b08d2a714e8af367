"""How long a long job will take, said once from its first measured steps, with the faster options where it is long."""

from __future__ import annotations

import time

import torch

WORTH_SAYING_S = 30  # a job shorter than this is not announced
LONG_ON_CPU_S = 10 * 60  # past this, a CPU run is told how to go faster


def faster_options(imgsz: tuple[int, int], patch: int, arch: str, device: torch.device) -> str | None:
    """How this run could go faster, from its own settings: half its --imgsz (where that keeps 4 patches a side),
    a GPU (on a CPU), the next smaller variant of its family that has weights; None when there is nothing."""
    from ..models.variants import VARIANTS

    options = []
    half = tuple(max(4 * patch, side // 2 // patch * patch) for side in imgsz)
    if all(h <= side for h, side in zip(half, imgsz, strict=True)) and half != tuple(imgsz):
        options.append(f"a smaller --imgsz (e.g. --imgsz {half[0]} {half[1]})")
    if device.type == "cpu":
        options.append("a GPU (--device cuda)")
    ours = VARIANTS.get(arch)
    if ours is not None:

        def size(v) -> int:
            return v.embed_dim**2 * v.depth

        family = [
            v
            for v in VARIANTS.values()
            if v.name.split("-")[0] == arch.split("-")[0] and v.url and size(v) < size(ours)
        ]
        if family:
            smaller = max(family, key=size)
            options.append(f"the --weights of a smaller --arch (e.g. {smaller.name} instead of {arch})")
    return f"faster: {', '.join(options)}" if options else None


def duration(seconds: float) -> str:
    """A rough human duration: '40 s', '12 min', '2 h 40 min'."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class Estimate:
    """Says, once `after` units past the first `warmup` have been measured, about how long `total` units take, on
    which device, and (long on a CPU) `faster`, the run's own faster options; the clock starts when it is made.

    The warm-up units (first calls: kernels chosen, memory found, caches filled) are timed apart and counted as
    they took, not as the pace of the rest."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        device: torch.device,
        *,
        after: int = 2,
        warmup: int = 1,
        faster: str | None = None,
    ) -> None:
        self.what, self.total, self.unit, self.device, self.faster = what, total, unit, device, faster
        self.warmup = max(0, min(warmup, total - 1))
        self.after = max(1, min(after, total - self.warmup))
        self.done, self.said, self.warm_done = 0, False, 0
        self.start = time.perf_counter()
        self.warm: float | None = None if self.warmup else self.start  # when the warm-up units were done

    def update(self, n: int = 1) -> list[str]:
        """Count `n` units done; the lines to say (an estimate, and where it is long on a CPU, the faster options)
        the first time enough are measured, unless the whole job is short; else none."""
        self.done += n
        if self.said:
            return []
        now = time.perf_counter()
        if self.warm is None:
            if self.done >= self.warmup:
                self.warm, self.warm_done = now, self.done
            return []
        warm_done = self.warm_done
        measured = self.done - warm_done
        if measured < self.after:
            return []
        self.said = True
        rate = (now - self.warm) / measured
        total = self.projection(now)
        if total < WORTH_SAYING_S:
            return []
        where = {"cpu": "this CPU", "cuda": "this GPU"}.get(self.device.type, f"this {self.device.type} device")
        skipped = f" after the first {warm_done}" if warm_done else ""
        lines = [
            f"{self.what}: about {duration(total)} on {where} for {self.total} {self.unit}s "
            f"({rate:.2f} s/{self.unit}, measured on {measured}{skipped})"
        ]
        if self.device.type == "cpu" and total > LONG_ON_CPU_S and self.faster:
            lines.append(self.faster)
        return lines

    def projection(self, now: float | None = None) -> float:
        """The whole job's seconds as measured so far: the warm-up as it took, the rest at the pace since (before
        any unit past the warm-up is done: the pace so far)."""
        now = time.perf_counter() if now is None else now
        measured = self.done - self.warm_done
        if self.warm is None or measured <= 0:
            return (now - self.start) / max(self.done, 1) * self.total
        return (self.warm - self.start) + (now - self.warm) / measured * (self.total - self.warm_done)
