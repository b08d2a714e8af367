"""What a run does around its epochs, each a subscriber of the Trainer's events (`events.py`): checkpoints,
the epoch lines, the time estimate, TensorBoard and, when the epochs stop early, the command that continues."""

from __future__ import annotations

from tqdm.auto import tqdm

from ..models.checkpoint import model_payload, snapshot, write_checkpoint
from ..utils.safetext import command
from .board import PREVIEWS, Board
from .eta import Estimate
from .events import Callback, Event
from .runfolder import LAST, METRICS, RunFolder

IDENTITY_KEYS = ("arch", "weights", "seed", "sha256", "fingerprint")  # the backbone a resume state was trained on
SHOWN_CLASSES = 4  # past this many classes, an epoch line shows the 3 worst (metrics.csv has every one)


class Checkpoints(Callback):
    """Each epoch (rank 0): the best checkpoints it beats, then the resume state and metrics.csv, from a snapshot
    taken at the epoch's end and written by the trainer's writer beside the next epoch (in this order, one epoch
    at a time); says checkpoint once they are queued."""

    def __init__(self, identity: dict, meta: dict) -> None:
        self.identity, self.meta = identity, meta

    def on_epoch_end(self, event: Event) -> None:
        trainer, epoch = event.trainer, event.epoch
        model, progress, clock, run = trainer.source.model, trainer.progress, trainer.clock, trainer.run
        with clock.part("epochs", "checkpoints (snapshot)"):
            meta_now = self.meta | {"epoch": epoch, "metrics": event.row}
            models = [
                (f"best_model_{kind}.pth", model_payload(model, self.identity, meta_now, copy=True))
                for kind in event.improved
            ]
            state = snapshot(
                {
                    "epoch": epoch,
                    "head": model.head.state_dict(),
                    "backbone": model.backbone.state_dict() if model.fine_tune else None,
                    "optimizer": trainer.optimizer.state_dict(),
                    "scheduler": trainer.scheduler.state_dict() if trainer.scheduler else None,
                    "history": list(progress.history),
                    "best": dict(progress.best),
                    "identity": {k: self.identity.get(k) for k in IDENTITY_KEYS},
                }
            )

        def write() -> None:
            with clock.part("epochs", "checkpoints (writer thread)"):
                for name, payload in models:
                    write_checkpoint(run / name, payload)
                run.save_last(state)
                trainer.saved = epoch  # the resume state is on disk: what the resume hint may name
                run.write_metrics(state["history"])

        with clock.part("epochs", "waiting for the checkpoint writer"):
            trainer.writer.submit(write)
        trainer.emit_after("checkpoint", epoch, files=(*(name for name, _ in models), LAST, METRICS))


class EpochLog(Callback):
    """One line per epoch in the log."""

    def on_epoch_end(self, event: Event) -> None:
        cfg = event.trainer.cfg
        event.trainer.log(epoch_line(event.row, cfg.epochs, cfg.class_names))


class StepEstimate(Callback):
    """The estimate of the whole training's time, said once from the first steps (rank 0)."""

    def __init__(self, estimate: Estimate) -> None:
        self.estimate = estimate

    def on_step(self, event: Event) -> None:
        for line in self.estimate.update():
            tqdm.write(line)


class TensorBoard(Callback):
    """TensorBoard event files (rank 0, with --tensorboard): each epoch's scores and a few valid previews."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def on_epoch_end(self, event: Event) -> None:
        trainer = event.trainer
        with trainer.clock.part("epochs", "tensorboard"):
            sample = trainer.source.valid_sample(PREVIEWS)
            previews = self.board.previews(trainer.source.trainable, *sample, context=trainer.context)
            self.board.epoch(event.row, previews)

    def on_stop(self, event: Event) -> None:
        self.board.close()


class ResumeHint(Callback):
    """After Ctrl-C or an error during the epochs: the last epoch on disk and the command that continues it."""

    def on_stop(self, event: Event) -> None:
        if event.error is not None:
            trainer = event.trainer
            trainer.log(how_to_continue(trainer.run, trainer.saved, trainer.cfg.epochs, event.error))


def stopped_by(err: BaseException) -> str:
    """'interrupted' for Ctrl-C (or SIGTERM), else 'stopped by' the error's type."""
    return "interrupted" if isinstance(err, KeyboardInterrupt) else f"stopped by {type(err).__name__}"


def how_to_continue(run: RunFolder, done: int, epochs: int, err: BaseException) -> str:
    """Where a run stopped (`done`: the last epoch whose resume state is on disk) and the command that continues
    it."""
    kept = f"after epoch {done} of {epochs} (saved in {run / LAST})" if done else "in epoch 1"
    fix = "" if isinstance(err, KeyboardInterrupt) else "once the cause is fixed, "
    return f"{stopped_by(err)} {kept}; {fix}continue with: {command('webdino-seg', 'train', '--resume', run.path)}"


def epoch_line(row: dict, epochs: int, class_names: list[str]) -> str:
    """One epoch in one line of bounded width: every class's valid IoU up to `SHOWN_CLASSES`, else the 3 worst
    and how many are absent from valid (no pixel in the masks or the predictions: no IoU)."""
    scores = {name: row[f"valid_iou_{name}"] for name in class_names}
    present = {name: v for name, v in scores.items() if v == v}
    absent = len(scores) - len(present)
    if len(class_names) <= SHOWN_CLASSES:
        ious = "IoU " + " ".join(f"{n} {v:.4f}" if v == v else f"{n} absent from valid" for n, v in scores.items())
    else:
        worst = sorted(present.items(), key=lambda kv: kv[1])[:3]
        ious = (
            "worst IoU "
            + " ".join(f"{n} {v:.4f}" for n, v in worst)
            + (f", {absent} class(es) absent from valid" if absent else "")
        )
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_pixel_acc']:.4f} "
        f"mIoU {row['train_miou']:.4f} | valid loss {row['valid_loss']:.4f} acc {row['valid_pixel_acc']:.4f} "
        f"mIoU {row['valid_miou']:.4f} ({ious}) | lr {row['lr']:.2e} | {row['seconds']:.1f}s"
    )
