"""What a training run says as it goes: the events, what each carries, and how subscribers hear them.

The Trainer (`trainer.py`) emits; logging, the time estimate, TensorBoard and checkpointing subscribe
(`callbacks.py`), and so can a user's own object: `train(cfg, callbacks=[obj])` calls `obj.on_epoch_end(event)`
and the like for each method `obj` has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# in the order a run says them: epoch_start, step (each optimisation step), epoch_end, checkpoint (rank 0, once
# the epoch's files are queued for writing), ..., stop (always last, also after Ctrl-C or an error)
EVENTS = ("epoch_start", "step", "epoch_end", "checkpoint", "stop")


@dataclass(frozen=True)
class Event:
    """One event: `epoch` counts from 1 (the epoch running or just finished; at stop, the epochs completed)."""

    name: str
    trainer: Any  # the Trainer: its settings (cfg), run folder (run), model (source.model), progress, clock, log
    epoch: int
    step: int | None = None  # step: its number in the epoch, from 1
    loss: float | None = None  # step: its loss
    row: dict | None = None  # epoch_end: the metrics.csv row of the epoch
    improved: tuple[str, ...] = ()  # epoch_end: the best scores it beat, of "loss" (valid loss) and "iou" (mIoU)
    files: tuple[str, ...] = ()  # checkpoint: the files being written, by name in the run folder
    error: BaseException | None = None  # stop: what stopped the run (KeyboardInterrupt for Ctrl-C), None if done


class Callback:
    """A subscriber's interface: override the events it listens to; each is called with the `Event`."""

    def on_epoch_start(self, event: Event) -> None:
        """An epoch begins."""

    def on_step(self, event: Event) -> None:
        """An optimisation step is done (not called for a batch without a labelled pixel)."""

    def on_epoch_end(self, event: Event) -> None:
        """An epoch is trained and validated."""

    def on_checkpoint(self, event: Event) -> None:
        """The epoch's checkpoint files are queued for writing (on disk before the next epoch's are)."""

    def on_stop(self, event: Event) -> None:
        """The epochs are over: finished, interrupted or failed (`event.error`)."""


class Events:
    """The subscribers of one run, called in the order given."""

    def __init__(self, subscribers: Iterable[object] = ()) -> None:
        self.subscribers = list(subscribers)
        for subscriber in self.subscribers:
            unknown = [n for n in dir(subscriber) if n.startswith("on_") and n[3:] not in EVENTS]
            if unknown:
                known = ", ".join(f"on_{e}" for e in EVENTS)
                raise ValueError(f"callback {subscriber!r}: {unknown[0]} is no training event (known: {known})")

    def emit(self, name: str, trainer: Any, epoch: int, **data: Any) -> None:
        """Call every subscriber's `on_<name>`; for stop, every one even when an earlier one raises (the first
        error is raised after the last)."""
        event = Event(name, trainer, epoch, **data)
        failure = None
        for subscriber in self.subscribers:
            handler = getattr(subscriber, f"on_{name}", None)
            if handler is None:
                continue
            if name != "stop":
                handler(event)
                continue
            try:
                handler(event)
            except BaseException as err:  # the others still close what they hold
                failure = failure or err
        if failure is not None:
            raise failure
