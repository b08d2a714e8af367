"""The training loop: build the model and its batch source, train and validate each epoch, keep the best.

Settings live in `config.py`, the run folder's files in `runfolder.py`, what a finished run leaves in
`artifacts.py`; where batches come from (cached features or live images, sharded under torchrun) in
`batches.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.datasets import DataError, SegmentationDataset, is_flat, split_pairs
from ..data.images import resolve_mask_mode
from ..data.splitrule import check_disjoint
from ..models.builder import build_backbone
from ..models.checkpoint import backbone_identity, model_payload, snapshot, write_checkpoint
from ..models.heads import create_head
from ..models.segmentation import SegmentationModel
from ..models.variants import BackboneConfig, get_variant
from ..utils.download import sha256_file
from ..utils.files import BackgroundWriter, atomic_write_text, check_writable
from ..utils.metrics import VOID, ConfusionMatrix
from ..utils.outputs import outside
from ..utils.runtime import amp_dtype, autocast, prepare_model, resolve_device, speed_flags
from ..utils.safetext import command
from . import distributed
from .artifacts import finish_run
from .batches import BatchSource
from .board import PREVIEWS, Board
from .config import ResumeError, TrainConfig
from .eta import Estimate, faster_options
from .features import CacheShare, chunk_count
from .losses import median_frequency_weights, parse_class_weights, segmentation_loss
from .runfolder import DATA, LAST, SPLIT, TIMINGS, RunFolder, differences
from .timings import Timings
from .warmstart import warm_start

__all__ = ["TrainConfig", "TrainingError", "train", "train_step"]


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


def check_data(cfg: TrainConfig) -> None:
    """A clear error when the dataset folder does not exist or has no usable layout."""
    root = Path(cfg.data)
    if not root.is_dir():
        raise DataError(
            f"--data {root}: folder not found. Training needs a folder with train_images/ train_masks/ valid_images/ "
            "valid_masks/ (or images/ and masks/ with --valid-fraction). Make one from the Penn-Fudan release "
            "with `webdino-seg prepare-data --source PennFudanPed --out data/pennfudan`, or use the bundled "
            "examples/pennfudan-sample."
        )
    outside(cfg.out, [root])
    if cfg.feature_cache_dir is not None:  # found now, not after the features were computed
        outside(cfg.feature_cache_dir, [root], "--feature-cache-dir")
        check_writable(cfg.feature_cache_dir, "--feature-cache-dir")
    if is_flat(root) and cfg.valid_fraction is None:
        raise DataError(
            f"--data {root}: holds images/ and masks/ without a train/valid split; add --valid-fraction 0.15 to "
            "hold out a seeded 15% for validation"
        )


def resolve_masks(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """The settings with ``--mask-mode auto`` decided from both splits' masks, and the note saying so."""
    if cfg.mask_mode != "auto":
        return cfg, None
    masks = [
        m
        for split in ("train", "valid")
        for _, m in split_pairs(
            cfg.data,
            split,
            valid_fraction=cfg.valid_fraction,
            seed=cfg.seed,
            on_missing="skip" if cfg.skip_bad else "error",
        )
    ]
    mode, note = resolve_mask_mode("auto", masks, cfg.num_classes, cfg.coding())
    return dataclasses.replace(cfg, mask_mode=mode), note


def datasets(
    cfg: TrainConfig, variant: BackboneConfig, recorded: dict | None = None
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Both splits, every pair decoded and checked once, before any backbone is built or weights fetched;
    for a flat folder, the split a resumed run `recorded` (image names per split)."""
    common = {
        "imgsz": cfg.imgsz,
        "mean": variant.mean,
        "std": variant.std,
        "num_classes": cfg.num_classes,
        "mask_mode": cfg.mask_mode,
        "seed": cfg.seed,
        "on_bad": "skip" if cfg.skip_bad else "error",
        "validate": True,
        "valid_fraction": cfg.valid_fraction,
        "coding": cfg.coding(),
        "recorded": recorded,
    }
    train_ds = SegmentationDataset(cfg.data, "train", augment=True, **common)
    valid_ds = SegmentationDataset(cfg.data, "valid", augment=False, **common)
    digests = check_disjoint({"train": [p for p, _ in train_ds.pairs], "valid": [p for p, _ in valid_ds.pairs]})
    train_ds.digests, valid_ds.digests = digests["train"], digests["valid"]  # the same image in both is refused
    for ds in (train_ds, valid_ds):  # hashed once: data.json, the checkpoints and the cache key read them
        ds.mask_digests = {image.name: sha256_file(mask) for image, mask in ds.pairs}
    return train_ds, valid_ds


def data_record(splits: tuple[SegmentationDataset, SegmentationDataset]) -> dict:
    """data.json: each split's images and masks by name, with size and sha256 (see `check_data_record`)."""
    record = {}
    for name, ds in zip(("train", "valid"), splits, strict=True):
        record[name] = {
            image.name: {
                "image": ds.digests[image.name],
                "image_bytes": image.stat().st_size,
                "mask": ds.mask_digests[image.name],
            }
            for image, _ in ds.pairs
        }
    return record


def check_data_record(run: RunFolder, splits: tuple[SegmentationDataset, SegmentationDataset]) -> None:
    """Refuse to resume on data that is not the data the run started with (images added to a split, removed, or
    changed, masks changed), naming the first of each; a run from before data.json gets one now."""
    now = data_record(splits)
    path = run / DATA
    if not path.exists():
        atomic_write_text(path, json.dumps(now, indent=1) + "\n")
        return
    then = json.loads(path.read_text())
    problems = []
    for split in ("train", "valid"):
        old, new = then.get(split, {}), now[split]
        added, gone = sorted(set(new) - set(old)), sorted(set(old) - set(new))
        changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
        for what, names in (("added", added), ("missing", gone), ("changed", changed)):
            if names:
                problems.append(f"{len(names)} {split} image(s) {what} (e.g. {names[0]})")
    if problems:
        raise ResumeError(
            f"--resume {run.path}: the data is not what the run started with ({path}): "
            f"{'; '.join(problems)}. A run keeps its data: put it back as it was, or start a new run "
            "(a new --out; --init-from RUN/best_model_iou.pth starts from this run's model)"
        )


def baseline(valid_ds: SegmentationDataset) -> dict:
    """The all-background baseline: scores of predicting the most frequent class everywhere on the valid
    split, at the training size."""
    cm = ConfusionMatrix(valid_ds.num_classes)
    for i in range(len(valid_ds)):
        mask = valid_ds[i][1]
        cm.update(torch.zeros_like(mask), mask)
    return cm.baseline()


def build_model(
    cfg: TrainConfig, variant: BackboneConfig, log: Callable[[str], None]
) -> tuple[SegmentationModel, dict]:
    """The backbone (loaded or seeded random) and a seeded head; returns the model and the backbone's identity."""
    weights = cfg.weights or variant.url
    if weights in (None, "random"):
        log(f"WARNING: {cfg.arch} uses RANDOM weights (--weights random): a smoke test, not a real model")
        weights = "random"
    try:
        backbone = build_backbone(variant, weights, cfg.seed)
    except ConnectionError as err:
        if cfg.weights is not None:
            raise
        raise ConnectionError(
            f"{err}. The default weights of {cfg.arch} come from that URL; without internet pass --weights with a "
            f"local copy (the official .pth or a Hugging Face folder), a Hub id already in your Hugging Face cache "
            f"({variant.hub_id}), or --weights random for a smoke test"
        ) from None
    identity = backbone_identity(backbone, weights, cfg.seed)
    torch.manual_seed(cfg.seed)
    head = create_head(cfg.head, backbone.embed_dim, cfg.num_classes)
    return SegmentationModel(backbone, head, fine_tune=cfg.fine_tune), identity


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: tuple[torch.Tensor, ...],
    masks: torch.Tensor,
    *,
    device: torch.device,
    amp: bool = True,
    loss: str = "ce",
    weight: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor] | None:
    """One optimisation step on the mean loss per non-void pixel of the whole (all-process) batch (`weight`:
    the cross-entropy's class weights).

    Returns the step's loss and the predictions, or None when the batch has no labelled pixel.
    Raises `NonFiniteLoss` before any weight is changed when the loss is not finite.
    """
    with autocast(device, amp):
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


def train(
    cfg: TrainConfig,
    resume: str | Path | None = None,
    log: Callable[[str], None] = print,
    changes: dict | None = None,
    *,
    share: CacheShare | None = None,
) -> Path:
    """Train a head (or fine-tune) as `cfg` says; return the run folder.

    `resume` continues a run folder; `changes` are flags given with it (see `TrainConfig.resumed_with`).
    `share` holds feature caches that other runs of this process made or will read (a sweep).
    Every setting is checked before the folder is made; the folder is made before anything slow starts.
    On a GPU the CUDA speed flags are on while it trains and as they were afterwards.
    """
    clock, run, state = Timings(), None, None
    with clock.stage("startup"):
        if resume is not None:
            run, before = RunFolder.open(resume)
            cfg = before.resumed_with(changes or {})
            state = run.load_last() if run.has_state() else None  # a damaged or foreign state stops it now
        check_data(cfg)
        rank, world, local_rank = distributed.setup(cfg.device)
        if run is not None:
            if rank == 0:  # one process cleans up before any reads the folder
                run.remove_stale()
                run.update_config(before, cfg)  # config.yaml repeats the run as it now is
                if run.record is None:  # a folder from before run ids: it gets one from now on
                    run.write_record(cfg)
            distributed.barrier()
            run.record = run.record or run._read_record()
        device = _device(cfg.device, world, local_rank)
    with speed_flags(device):
        return _train(cfg, run, device, _quiet if rank > 0 else log, state, clock, share)


def _train(
    cfg: TrainConfig,
    run: RunFolder | None,
    device: torch.device,
    log: Callable[[str], None],
    state: dict | None,
    clock: Timings,
    share: CacheShare | None = None,
) -> Path:
    """`train` once the settings, the device and (resuming) the checked resume state are known."""
    with clock.stage("startup"):
        cfg, run, splits, base, weights, model, identity = _setup(cfg, run, device, log, state, clock)
    try:
        with clock.stage("cache"):
            model = prepare_model(model, device, cfg.amp)
            source = _batch_source(cfg, model, splits, device, identity, run.features, clock, share)
    except BaseException as err:
        _say_what_was_kept(run, cfg, splits, log, err)
        raise
    with clock.stage("startup"):
        if source.cached:
            log(source.describe_cache())
        optimizer, scheduler = _optimizer(model, cfg)
        progress = Progress()
        if state is not None:
            progress = _restore(state, model, optimizer, scheduler)
            log(f"resuming {run.path} after epoch {progress.epoch}")
        meta = _checkpoint_meta(cfg, get_variant(cfg.arch), base, splits, weights) | {"run_id": run.run_id}
        steps = source.steps_per_epoch() * (cfg.epochs - progress.epoch)
        faster = faster_options(cfg.imgsz, model.backbone.patch_size, cfg.arch, device)
        estimate = Estimate(
            f"training {cfg.epochs - progress.epoch} epoch(s)", steps, "step", device, after=3, faster=faster
        )
        board = (
            Board(run.path, cfg.class_names, cfg.class_colors, progress.epoch)
            if (cfg.tensorboard and distributed.rank() == 0)
            else None
        )
    loop = _Loop(cfg, run, source, optimizer, scheduler, device, identity, meta, log, weights, estimate, board, clock)
    try:
        with clock.stage("epochs"):
            try:
                _epochs(loop, progress)
            finally:
                loop.writer.close()  # the last epoch's files are on disk before anything is said or read
    except BaseException as err:
        log(_how_to_continue(run, progress, cfg.epochs, err))
        raise
    finally:
        if board is not None:
            board.close()
    scores = _finish(loop, progress)
    _say_where_to_go(run, progress, base, cfg, log, clock, scores)
    return run.path


def _finish(loop: _Loop, progress: Progress) -> dict | None:
    """The final model, curves and valid_preds (rank 0: the other processes are done, none waits in a collective
    that could time out); stopped here, it says how to continue (resuming makes them again)."""
    try:
        with loop.clock.stage("finish"):
            if distributed.rank() == 0:
                final_meta = loop.meta | {
                    "epoch": loop.cfg.epochs,
                    "metrics": progress.history[-1] if progress.history else {},
                }
                return finish_run(
                    loop.run,
                    loop.source.model,
                    loop.identity,
                    final_meta,
                    history=progress.history,
                    valid_pairs=loop.source.valid_ds.pairs,
                    cfg=loop.cfg,
                    device=loop.device,
                    clock=loop.clock,
                )
    except BaseException as err:
        loop.log(_how_to_continue(loop.run, progress, loop.cfg.epochs, err))
        raise
    return None


def _setup(
    cfg: TrainConfig,
    run: RunFolder | None,
    device: torch.device,
    log: Callable[[str], None],
    state: dict | None,
    clock: Timings,
) -> tuple:
    """Masks resolved, both splits decoded and checked, the baseline and class weights, the model built (and,
    resuming, its backbone checked against the state), the run folder made: (cfg, run, splits, baseline, class
    weights, model, backbone identity)."""
    if device.type == "cuda" and cfg.amp and amp_dtype(device) is None:
        log(
            f"{torch.cuda.get_device_name(device)} has no native bf16 (compute capability "
            f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}): running in float32"
        )
    variant = get_variant(cfg.arch)
    cfg, note = resolve_masks(cfg)
    if note:
        log(note)
    with clock.part("startup", "reading and checking data"):
        splits = datasets(cfg, variant, run.split() if run is not None else None)
        if run is not None:
            check_data_record(run, splits)
        base = baseline(splits[1])
    weights = class_weights(cfg, splits[0], log)
    with clock.part("startup", "building the backbone"):
        model, identity = build_model(cfg, variant, log)
    if state is not None:  # before any feature is extracted
        check_identity(run, state, identity)
    if cfg.init_from:
        log(warm_start(model, identity, cfg, splits[1].digests))
    if run is None:
        rank = distributed.rank()
        run = distributed.broadcast(_new_run(cfg, splits, [note, _baseline_line(base, cfg)]) if rank == 0 else None)
    world = distributed.world_size()
    processes = f"  processes: {world}" if world > 1 else ""
    log(f"run folder: {run.path}  device: {device}{processes}  backbone: {cfg.arch} ({identity['weights']})")
    log(_baseline_line(base, cfg))
    return cfg, run, splits, base, weights, model, identity


@dataclass
class _Loop:
    """What every epoch of a run works with."""

    cfg: TrainConfig
    run: RunFolder
    source: BatchSource
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    device: torch.device
    identity: dict
    meta: dict
    log: Callable[[str], None]
    weights: torch.Tensor | None = None  # the cross-entropy's class weights
    estimate: Estimate | None = None  # said once, from the first steps this process trains
    board: Board | None = None  # TensorBoard event files (rank 0, with --tensorboard)
    clock: Timings = field(default_factory=Timings)  # where the epochs' time goes
    writer: BackgroundWriter = field(default_factory=BackgroundWriter)  # checkpoints, beside the next epoch


def _epochs(loop: _Loop, progress: Progress) -> None:
    """Train and validate from the epoch after `progress` to the last; checkpoint and log each epoch."""
    cfg, rank = loop.cfg, distributed.rank()
    for epoch in range(progress.epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = loop.optimizer.param_groups[0]["lr"]
        train_loss, train_cm = _train_epoch(loop, epoch, progress, rank > 0)
        if loop.scheduler:
            loop.scheduler.step()
        with loop.clock.part("epochs", "validation"):
            valid = evaluate_source(
                loop.source, cfg.num_classes, loop.device, amp=cfg.amp, loss=cfg.loss, weight=loop.weights
            )
        row = _epoch_row(epoch, lr, (train_loss, train_cm), valid, cfg.class_names)
        progress.history.append(row | {"seconds": time.perf_counter() - t0})
        progress.epoch = epoch + 1
        if rank == 0:
            _save_epoch(loop, progress, progress.history[-1])
            if loop.board is not None:
                with loop.clock.part("epochs", "tensorboard"):
                    sample = loop.source.valid_sample(PREVIEWS)
                    loop.board.epoch(
                        row, loop.board.previews(loop.source.trainable, *sample, device=loop.device, amp=cfg.amp)
                    )
        distributed.barrier()  # no process runs ahead of what is on disk
        loop.log(_epoch_line(progress.history[-1], cfg.epochs, cfg.class_names))


def _optimizer(model: SegmentationModel, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, object]:
    """AdamW over the trainable parameters and, with --scheduler, the step-down schedule."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    if not cfg.scheduler:
        return optimizer, None
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.scheduler_epochs), gamma=0.1)


def _baseline_line(base: dict, cfg: TrainConfig) -> str:
    """The all-background (most frequent class) baseline as the log and config.yaml say it."""
    name = cfg.class_names[base["class"]]
    h, w = cfg.imgsz
    return (
        f"all-{name} baseline on valid (predicting {name} everywhere): mIoU {base['miou']:.4f}, "
        f"pixel accuracy {base['pixel_accuracy']:.4f} (at the training size {h}x{w}, as every epoch's valid "
        "scores; evaluate scores at each image's full size)"
    )


def _new_run(cfg: TrainConfig, splits: tuple[SegmentationDataset, SegmentationDataset], notes: list) -> RunFolder:
    """A new run folder with its config.yaml (`notes` as comments) and, for a flat folder, split.json."""
    run = RunFolder.create(cfg, [n for n in notes if n])
    atomic_write_text(run / DATA, json.dumps(data_record(splits), indent=1) + "\n")
    if is_flat(Path(cfg.data)):
        _write_split(run, splits, cfg)
    return run


def _checkpoint_meta(
    cfg: TrainConfig,
    variant: BackboneConfig,
    base: dict,
    splits: tuple[SegmentationDataset, SegmentationDataset],
    weights: torch.Tensor | None,
) -> dict:
    """What every model checkpoint of the run records besides the weights: sizes, classes and how masks are read
    (so evaluate reads them the same way), the baseline, and for a flat folder the split (evaluate keeps to it)."""
    meta = {
        "imgsz": list(cfg.imgsz),
        "class_names": cfg.class_names,
        "class_colors": cfg.class_colors,
        "labels": cfg.coding().to_dict() | {"mask_mode": cfg.mask_mode},
        "mean": list(variant.mean),
        "std": list(variant.std),
        "config": cfg.to_dict(),
        "head_name": cfg.head,
        "baseline": base,
        "class_weights": weights.tolist() if weights is not None else None,
        "train_images": splits[0].digests,  # by name and sha256: --init-from refuses a valid split holding any
    }
    if is_flat(Path(cfg.data)):
        meta["split"] = split_record(splits, cfg)
    return meta


def class_weights(cfg: TrainConfig, train_ds: SegmentationDataset, log: Callable[[str], None]) -> torch.Tensor | None:
    """The cross-entropy's class weights as --class-weights says (median frequency: from the training split's
    masks), said in one line; None for unweighted."""
    parsed = parse_class_weights(cfg.class_weights, cfg.num_classes)
    if parsed is None:
        return None
    if parsed == "median-freq":
        counts = torch.from_numpy(train_ds.class_pixels), torch.from_numpy(train_ds.image_pixels)
        weights = median_frequency_weights(*counts)
        how = "median frequency over the training split"
    else:
        weights, how = torch.tensor(parsed, dtype=torch.float32), "given"
    shown = ", ".join(f"{n} {w:.4f}" for n, w in zip(cfg.class_names, weights.tolist(), strict=True))
    log(f"class weights ({how}): {shown}")
    return weights


def _say_where_to_go(
    run: RunFolder, progress: Progress, base: dict, cfg: TrainConfig, log, clock: Timings, scores: dict | None = None
) -> None:
    """The last lines: where the time went (also written as timings.json), the best score beside the baseline,
    the run folder, the commands for its best model."""
    if distributed.rank() == 0:
        atomic_write_text(run / TIMINGS, json.dumps(clock.to_dict(), indent=2) + "\n")
    for line in clock.lines():
        log(line)
    names = cfg.class_names
    log(
        f"best valid mIoU {progress.best['miou']:.4f} at epoch {progress.best['iou_epoch']} "
        f"(all-{names[base['class']]} baseline {base['miou']:.4f}); run folder: {run.path}"
    )
    if scores is not None:  # what valid_preds/ scored: the best model at each image's full size
        low, high = scores["miou_ci"]
        log(
            f"best model on the {scores['images']} valid images at full size: mIoU {scores['miou']:.4f} "
            f"[{low:.4f}, {high:.4f}] (95% interval, bootstrap over the images: a difference inside it may be noise)"
        )
    best, ws = run / "best_model_iou.pth", "webdino-seg"
    log("next: " + command(ws, "predict", "--input", "IMAGES", "--model", best, "--out", run / "predict"))
    log("      " + command(ws, "video", "--input", "VIDEO.mp4", "--model", best, "--out", run / "video.mp4"))
    log("      " + command(ws, "evaluate", "--data", cfg.data, "--model", best, "--report", run / "report"))
    log("      " + command(ws, "export", "--model", best, "--out", run / "model.onnx"))


def _stopped_by(err: BaseException) -> str:
    """'interrupted' for Ctrl-C (or SIGTERM), else 'stopped by' the error's type."""
    return "interrupted" if isinstance(err, KeyboardInterrupt) else f"stopped by {type(err).__name__}"


def _how_to_continue(run: RunFolder, progress: Progress, epochs: int, err: BaseException) -> str:
    """After Ctrl-C or an error during the epochs: where the run stopped and the command that continues it."""
    how = _stopped_by(err)
    kept = f"after epoch {progress.epoch} of {epochs} (saved in {run / LAST})" if progress.epoch else "in epoch 1"
    fix = "" if isinstance(err, KeyboardInterrupt) else "once the cause is fixed, "
    return f"{how} {kept}; {fix}continue with: {command('webdino-seg', 'train', '--resume', run.path)}"


def split_record(splits: tuple[SegmentationDataset, SegmentationDataset], cfg: TrainConfig) -> dict:
    """Which images of a flat images/ + masks/ folder went to train and to valid (split.json, and checkpoints)."""
    return {
        "valid_fraction": cfg.valid_fraction,
        "seed": cfg.seed,
        **{name: [p.name for p, _ in ds.pairs] for name, ds in zip(("train", "valid"), splits, strict=True)},
    }


def _write_split(run: RunFolder, splits: tuple[SegmentationDataset, SegmentationDataset], cfg: TrainConfig) -> None:
    """split.json: the run's split of a flat folder, decided once; --resume and evaluate keep to it."""
    atomic_write_text(run / SPLIT, json.dumps(split_record(splits, cfg), indent=2) + "\n")


def _say_what_was_kept(
    run: RunFolder,
    cfg: TrainConfig,
    splits: tuple[SegmentationDataset, SegmentationDataset],
    log,
    err: BaseException,
) -> None:
    """After Ctrl-C or an error during caching: what was kept and the command that continues."""
    kept = sum(chunk_count(d) for d in run.features.glob("*") if d.is_dir())
    total = cfg.views * len(splits[0]) + len(splits[1])
    log(
        f"{_stopped_by(err)} while caching features: the features of {kept} of {total} images are kept in "
        f"{run.features}; continue with: {command('webdino-seg', 'train', '--resume', run.path)}"
    )


def _device(spec: str, world: int, local_rank: int) -> torch.device:
    """The device this process trains on (its own GPU under torchrun)."""
    device = resolve_device(spec)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    return device


def _batch_source(
    cfg: TrainConfig,
    model: SegmentationModel,
    splits: tuple[SegmentationDataset, SegmentationDataset],
    device: torch.device,
    identity: dict,
    progress_dir: Path,
    clock: Timings,
    share: CacheShare | None = None,
) -> BatchSource:
    """Batches as `cfg` asks: cached features (extracted here, kept in chunks in `progress_dir`) or live images;
    the extraction's time goes into `clock`."""
    return BatchSource(
        model,
        splits,
        device,
        batch=cfg.batch,
        seed=cfg.seed,
        workers=cfg.loader_workers,
        cache=cfg.cache,
        cache_views=cfg.views,
        cache_dir=cfg.feature_cache_dir,
        cache_memory_gb=cfg.cache_memory_gb,
        identity=identity,
        progress_dir=progress_dir,
        amp=cfg.amp,
        clock=clock,
        share=share,
    )


def _epoch_row(
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


def _train_epoch(loop: _Loop, epoch: int, progress: Progress, quiet: bool) -> tuple[float, ConfusionMatrix]:
    """One pass over the training split; returns the mean step loss and the confusion matrix."""
    source, cfg, run = loop.source, loop.cfg, loop.run
    source.model.train()
    cm, total_loss, steps = ConfusionMatrix(cfg.num_classes, loop.device), 0.0, 0  # counted on the device
    bar = tqdm(
        loop.clock.timed(source.train_batches(epoch), "epochs", "waiting for batches"),
        total=source.steps_per_epoch(),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        leave=False,
        disable=quiet,
    )
    for step, (inputs, masks) in enumerate(bar):
        try:
            with loop.clock.part("epochs", "training steps"):
                done = train_step(
                    source.net,
                    loop.optimizer,
                    inputs,
                    masks,
                    device=loop.device,
                    amp=cfg.amp,
                    loss=cfg.loss,
                    weight=loop.weights,
                )
        except NonFiniteLoss as err:
            loop.writer.wait()  # the last epoch's state is on disk before it is named
            last = f"{run / LAST} (epoch {progress.epoch})" if (run / LAST).exists() else "none yet"
            raise TrainingError(
                f"loss became {err.value} at epoch {epoch + 1}, step {step + 1}; stopped. Last good checkpoint: "
                f"{last}. Try a lower --lr."
            ) from None
        if done is None:
            continue
        step_loss, pred = done
        cm.update(pred.detach(), masks)
        total_loss += step_loss
        steps += 1
        bar.set_postfix(loss=f"{step_loss:.4f}")
        for line in loop.estimate.update() if loop.estimate and not quiet else []:
            bar.write(line)
    bar.close()
    distributed.all_sum(cm.mat)
    cm.mat = cm.mat.cpu()
    return total_loss / max(steps, 1), cm


def _save_epoch(loop: _Loop, progress: Progress, row: dict) -> None:
    """The best checkpoints when this epoch beats them, then the resume state and metrics.csv: a snapshot taken
    now, written in the background while the next epoch trains (files in this order, one epoch at a time)."""
    run, model, identity, best, epoch = loop.run, loop.source.model, loop.identity, progress.best, row["epoch"]
    with loop.clock.part("epochs", "checkpoints (snapshot)"):
        meta_now = loop.meta | {"epoch": epoch, "metrics": row}
        models = []
        if row["valid_loss"] < best["loss"]:
            best["loss"] = row["valid_loss"]
            models.append(("best_model_loss.pth", model_payload(model, identity, meta_now, copy=True)))
        if row["valid_miou"] > best["miou"]:
            best.update(miou=row["valid_miou"], iou_epoch=epoch)
            models.append(("best_model_iou.pth", model_payload(model, identity, meta_now, copy=True)))
        state = snapshot(
            {
                "epoch": epoch,
                "head": model.head.state_dict(),
                "backbone": model.backbone.state_dict() if model.fine_tune else None,
                "optimizer": loop.optimizer.state_dict(),
                "scheduler": loop.scheduler.state_dict() if loop.scheduler else None,
                "history": list(progress.history),
                "best": dict(best),
                "identity": {k: identity.get(k) for k in IDENTITY_KEYS},
            }
        )

    def write() -> None:
        with loop.clock.part("epochs", "checkpoints (writer thread)"):
            for name, payload in models:
                write_checkpoint(run / name, payload)
            run.save_last(state)
            run.write_metrics(state["history"])

    with loop.clock.part("epochs", "waiting for the checkpoint writer"):
        loop.writer.submit(write)


IDENTITY_KEYS = ("arch", "weights", "seed", "sha256", "fingerprint")


def check_identity(run: RunFolder, state: dict, identity: dict) -> None:
    """Refuse a resume state whose backbone (variant, weights source and hash, or random seed and fingerprint)
    is not the one this run built, naming what differs."""
    recorded = state.get("identity")
    if recorded is None:  # a state from before identities were recorded
        return
    changed = differences({k: recorded.get(k) for k in IDENTITY_KEYS}, {k: identity.get(k) for k in IDENTITY_KEYS})
    if changed:
        raise ResumeError(
            f"{run / LAST}: trained on another backbone than this run builds now: {'; '.join(changed)}. "
            "Resume with the weights the run started with, or start a new run"
        )


def _restore(state: dict, model: SegmentationModel, optimizer, scheduler) -> Progress:
    """Load the resume state into the model, optimizer and scheduler; return the progress it records."""
    model.head.load_state_dict(state["head"])
    if state["backbone"] is not None:
        model.backbone.load_state_dict(state["backbone"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler and state["scheduler"]:
        scheduler.load_state_dict(state["scheduler"])
    return Progress(state["epoch"], state["history"], state["best"])


SHOWN_CLASSES = 4  # past this many classes, an epoch line shows the 3 worst (metrics.csv has every one)


def _epoch_line(row: dict, epochs: int, class_names: list[str]) -> str:
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


def _quiet(*_args: object) -> None:
    """Log sink for processes other than rank 0."""


@torch.no_grad()
def evaluate_source(
    source: BatchSource,
    num_classes: int,
    device: torch.device,
    *,
    amp: bool = True,
    loss: str = "ce",
    weight: torch.Tensor | None = None,
) -> tuple[float, ConfusionMatrix]:
    """Validation loss (per non-void pixel) and confusion matrix over the whole split."""
    source.model.eval()
    cm, loss_sum, pixels = ConfusionMatrix(num_classes), 0.0, 0
    for inputs, masks in source.valid_batches():
        with autocast(device, amp):
            logits = source.trainable(*inputs)  # unwrapped: no collectives in evaluation
        batch_loss, pred = segmentation_loss(logits, masks, loss, weight)
        loss_sum += batch_loss.item()
        pixels += int((masks != VOID).sum())
        cm.update(pred, masks)
    totals = distributed.all_sum(torch.tensor([loss_sum, float(pixels)], dtype=torch.float64))
    distributed.all_sum(cm.mat)
    return float(totals[0] / max(totals[1], 1.0)), cm
