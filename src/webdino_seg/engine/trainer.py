"""The epochs: train on the batch source, validate, and say each step and epoch as an event (`events.py`).

What happens around the loop (logging, the time estimate, TensorBoard, checkpoints) subscribes to the events
(`callbacks.py`); `train.py` builds a Trainer and its subscribers from the settings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..utils.files import BackgroundWriter
from ..utils.metrics import VOID, ConfusionMatrix
from ..utils.runtime import RunContext
from . import distributed
from .batches import BatchSource
from .config import TrainConfig
from .events import Events
from .losses import segmentation_loss
from .runfolder import LAST, RunFolder
from .timings import Timings


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stopped being finite)."""


class NonFiniteLoss(TrainingError):
    """The loss of a step was NaN or infinite."""

    def __init__(self, value: float) -> None:
        super().__init__(f"loss became {value}")
        self.value = value


@dataclass
class Progress:
    """What `--resume` restores besides the weights: epochs done, per-epoch metrics, the best so far."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"loss": math.inf, "miou": -math.inf, "iou_epoch": 0})

    def improve(self, row: dict) -> tuple[str, ...]:
        """Take an epoch's valid loss and mIoU where they beat the best so far; returns which ("loss", "iou")."""
        improved = []
        if row["valid_loss"] < self.best["loss"]:
            self.best["loss"] = row["valid_loss"]
            improved.append("loss")
        if row["valid_miou"] > self.best["miou"]:
            self.best.update(miou=row["valid_miou"], iou_epoch=row["epoch"])
            improved.append("iou")
        return tuple(improved)


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: tuple[torch.Tensor, ...],
    masks: torch.Tensor,
    *,
    context: RunContext,
    loss: str = "ce",
    weight: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor] | None:
    """One optimisation step on the mean loss per non-void pixel of the whole (all-process) batch (`weight`:
    the cross-entropy's class weights).

    Returns the step's loss and the predictions, or None when the batch has no labelled pixel.
    Raises `NonFiniteLoss` before any weight is changed when the loss is not finite.
    """
    with context.autocast():
        logits = net(*inputs)
    loss_sum, pred = segmentation_loss(logits, masks, loss, weight)
    # labelled pixels and summed loss over the whole batch (all processes): the step's one wait for the device
    totals = torch.stack([(masks != VOID).sum().double(), loss_sum.detach().double()])
    valid, total = distributed.all_sum(totals).tolist()
    if valid == 0:
        return None
    step_loss = total / valid
    if not math.isfinite(step_loss):
        raise NonFiniteLoss(step_loss)
    optimizer.zero_grad(set_to_none=True)
    # each process holds part of the batch; DDP averages gradients, hence the factor world_size
    (loss_sum / valid * distributed.world_size()).backward()
    optimizer.step()
    return step_loss, pred


@torch.no_grad()
def evaluate_source(
    source: BatchSource,
    num_classes: int,
    *,
    loss: str = "ce",
    weight: torch.Tensor | None = None,
) -> tuple[float, ConfusionMatrix]:
    """Validation loss (per non-void pixel) and confusion matrix over the whole split, in the source's context."""
    source.model.eval()
    cm, loss_sum, pixels = ConfusionMatrix(num_classes), 0.0, 0
    for inputs, masks in source.valid_batches():
        with source.context.autocast():
            logits = source.trainable(*inputs)  # unwrapped: no collectives in evaluation
        batch_loss, pred = segmentation_loss(logits, masks, loss, weight)
        loss_sum += batch_loss.item()
        pixels += int((masks != VOID).sum())
        cm.update(pred, masks)
    totals = distributed.all_sum(torch.tensor([loss_sum, float(pixels)], dtype=torch.float64))
    distributed.all_sum(cm.mat)
    return float(totals[0] / max(totals[1], 1.0)), cm


def epoch_row(
    epoch: int,
    lr: float,
    train: tuple[float, ConfusionMatrix],
    valid: tuple[float, ConfusionMatrix],
    class_names: list[str],
) -> dict:
    """One metrics.csv row (without the wall-clock seconds) from the (loss, confusion matrix) of each split."""
    (train_loss, train_cm), (valid_loss, valid_cm) = train, valid
    names = [f"valid_iou_{n}" for n in class_names]
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": train_loss,
        "train_pixel_acc": train_cm.pixel_accuracy(),
        "train_miou": train_cm.miou(),
        "valid_loss": valid_loss,
        "valid_pixel_acc": valid_cm.pixel_accuracy(),
        "valid_miou": valid_cm.miou(),
        **dict(zip(names, valid_cm.iou().tolist(), strict=True)),
    }


@dataclass
class Trainer:
    """The epochs of one run: what they train with, and who hears about them (`events`)."""

    cfg: TrainConfig
    run: RunFolder
    source: BatchSource
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    context: RunContext  # the device, and bf16 or not
    log: Callable[[str], None]
    progress: Progress = field(default_factory=Progress)  # epochs done, their rows, the best so far
    events: Events = field(default_factory=Events)
    weights: torch.Tensor | None = None  # the cross-entropy's class weights
    quiet: bool = False  # no progress bar (processes other than rank 0)
    clock: Timings = field(default_factory=Timings)  # where the epochs' time goes
    writer: BackgroundWriter = field(default_factory=BackgroundWriter)  # subscribers' files, beside the next epoch

    queued: list[tuple[str, int, dict]] = field(default_factory=list)  # said once the event being said is done
    saved: int = field(init=False)  # the last epoch whose resume state is on disk (its writer updates it)

    def __post_init__(self) -> None:
        self.saved = self.progress.epoch  # a resumed run's last.pth holds the epochs it restored

    def emit(self, name: str, epoch: int, **data: object) -> None:
        """Tell every subscriber (see `events.Events.emit`), then what they queued with `emit_after`."""
        try:
            self.events.emit(name, self, epoch, **data)
        except BaseException:
            self.queued.clear()  # the event was not heard to its end: what follows from it is not said
            raise
        queued, self.queued = self.queued, []
        for later in queued:
            self.emit(later[0], later[1], **later[2])

    def emit_after(self, name: str, epoch: int, **data: object) -> None:
        """Say an event once every subscriber has heard the one being said (a checkpoint after epoch_end)."""
        self.queued.append((name, epoch, data))

    def fit(self) -> None:
        """Train and validate from the epoch after `progress` to the last; stop is said last, whatever ended the
        epochs, once the files queued in `writer` are on disk."""
        error, progress = None, self.progress
        try:
            for epoch in range(progress.epoch, self.cfg.epochs):
                self._epoch(epoch, progress)
        except BaseException as err:
            error = err
            raise
        finally:
            try:
                self.writer.close()  # the last epoch's files are on disk before anything is said or read
            except BaseException as err:  # a write that failed (a full disk) stops the run as well
                error = error or err
                raise
            finally:
                self.emit("stop", progress.epoch, error=error)

    def _epoch(self, epoch: int, progress: Progress) -> None:
        """One epoch: train, step the schedule, validate, record it in `progress`, say it."""
        cfg, t0 = self.cfg, time.perf_counter()
        self.emit("epoch_start", epoch + 1)
        lr = self.optimizer.param_groups[0]["lr"]
        trained = self._train_epoch(epoch, progress)
        if self.scheduler:
            self.scheduler.step()
        with self.clock.part("epochs", "validation"):
            valid = evaluate_source(self.source, cfg.num_classes, loss=cfg.loss, weight=self.weights)
        row = epoch_row(epoch, lr, trained, valid, cfg.class_names) | {"seconds": time.perf_counter() - t0}
        progress.history.append(row)
        progress.epoch = epoch + 1
        improved = progress.improve(row)
        self.emit("epoch_end", epoch + 1, row=row, improved=improved)
        distributed.barrier()  # no process runs ahead of the others

    def _train_epoch(self, epoch: int, progress: Progress) -> tuple[float, ConfusionMatrix]:
        """One pass over the training split; returns the mean step loss and the confusion matrix."""
        source, cfg = self.source, self.cfg
        source.model.train()
        cm, total_loss, steps = ConfusionMatrix(cfg.num_classes, self.context.device), 0.0, 0  # counted on the device
        bar = tqdm(
            self.clock.timed(source.train_batches(epoch), "epochs", "waiting for batches"),
            total=source.steps_per_epoch(),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=self.quiet,
        )
        for step, (inputs, masks) in enumerate(bar):
            with self.clock.part("epochs", "training steps"):
                done = self._step(inputs, masks, epoch, step, progress)
            if done is None:
                continue
            step_loss, pred = done
            cm.update(pred.detach(), masks)
            total_loss += step_loss
            steps += 1
            bar.set_postfix(loss=f"{step_loss:.4f}")
            self.emit("step", epoch + 1, step=step + 1, loss=step_loss)
        bar.close()
        distributed.all_sum(cm.mat)
        cm.mat = cm.mat.cpu()
        return total_loss / max(steps, 1), cm

    def _step(
        self, inputs: tuple[torch.Tensor, ...], masks: torch.Tensor, epoch: int, step: int, progress: Progress
    ) -> tuple[float, torch.Tensor] | None:
        """`train_step` on one batch; a loss that is not finite stops the run, naming the last good state."""
        cfg = self.cfg
        try:
            return train_step(
                self.source.net,
                self.optimizer,
                inputs,
                masks,
                context=self.context,
                loss=cfg.loss,
                weight=self.weights,
            )
        except NonFiniteLoss as err:
            self.writer.wait()  # the last epoch's state is on disk before it is named
            run = self.run
            last = f"{run / LAST} (epoch {progress.epoch})" if (run / LAST).exists() else "none yet"
            raise TrainingError(
                f"loss became {err.value} at epoch {epoch + 1}, step {step + 1}; stopped. Last good checkpoint: "
                f"{last}. Try a lower --lr."
            ) from None
