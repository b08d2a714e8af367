"""A training run: check the settings and data, build the model and its batch source, run the epochs with
their subscribers, finish the run folder. `train(cfg)` starts one, `resume(run, changes)` continues one.

Settings live in `config.py`, the run folder's files in `runfolder.py`, what a finished run leaves in
`artifacts.py`; where batches come from (cached features or live images, sharded under torchrun) in
`batches.py`; the epochs in `trainer.py`, and what happens around them (checkpoints, logs, TensorBoard, the
estimate) in `callbacks.py`, as subscribers of the events in `events.py`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..data.datasets import DataError, SegmentationDataset, is_flat, split_pairs
from ..data.images import resolve_mask_mode
from ..data.splitrule import check_disjoint
from ..models.builder import build_backbone
from ..models.checkpoint import backbone_identity
from ..models.heads import create_head
from ..models.segmentation import SegmentationModel
from ..models.variants import BackboneConfig, get_variant
from ..utils.download import sha256_file
from ..utils.files import atomic_write_text, check_writable
from ..utils.metrics import ConfusionMatrix
from ..utils.outputs import outside
from ..utils.runtime import RunContext, amp_dtype, resolve_device, speed_flags
from ..utils.safetext import command
from . import distributed
from .artifacts import finish_run
from .batches import BatchSource
from .board import Board
from .callbacks import (
    IDENTITY_KEYS,
    Checkpoints,
    EpochLog,
    ResumeHint,
    StepEstimate,
    TensorBoard,
    how_to_continue,
    stopped_by,
)
from .config import ResumeError, TrainConfig
from .eta import Estimate, faster_options
from .events import Callback, Events
from .features import CacheShare, chunk_count
from .losses import median_frequency_weights, parse_class_weights
from .runfolder import DATA, LAST, SPLIT, TIMINGS, RunFolder, differences
from .timings import Timings
from .trainer import Progress, Trainer, TrainingError, evaluate_source, train_step
from .warmstart import warm_start

__all__ = ["TrainConfig", "TrainingError", "evaluate_source", "resume", "train", "train_step"]


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


def train(
    cfg: TrainConfig,
    *,
    log: Callable[[str], None] = print,
    callbacks: Sequence[object] = (),
    share: CacheShare | None = None,
) -> Path:
    """Train a head (or fine-tune) as `cfg` says; return the run folder.

    `callbacks`: objects with any of the methods of `events.Callback` (`on_epoch_end(event)`...), told each
    event after the run's own subscribers. `share` holds feature caches that other runs of this process made or
    will read (a sweep). Every setting is checked before the folder is made; the folder is made before anything
    slow starts. On a GPU the CUDA speed flags are on while it trains and as they were afterwards.
    """
    return _start(cfg, None, None, log, Events(callbacks), share)


def resume(
    run: str | Path,
    changes: dict | None = None,
    *,
    log: Callable[[str], None] = print,
    callbacks: Sequence[object] = (),
    share: CacheShare | None = None,
) -> Path:
    """Continue the run in folder `run` after its last completed epoch, with the settings in its config.yaml
    and `changes` to those a resumed run may change (see `TrainConfig.resumed_with`); return the run folder.

    A run that finished makes its final files again. The data and the backbone must be the ones the run started
    with; a damaged or foreign resume state is refused before any work. The other arguments are `train`'s.
    """
    return _start(None, run, changes or {}, log, Events(callbacks), share)


def _start(
    cfg: TrainConfig | None,
    resumed: str | Path | None,
    changes: dict | None,
    log: Callable[[str], None],
    events: Events,
    share: CacheShare | None,
) -> Path:
    """`train` or `resume`: the settings and (resuming) the resume state read and checked, the processes and
    the device set up."""
    clock, run, state = Timings(), None, None
    with clock.stage("startup"):
        if resumed is not None:
            run, before = RunFolder.open(resumed)
            cfg = before.resumed_with(changes)
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
        return _train(cfg, run, RunContext(device, cfg.amp), _quiet if rank > 0 else log, state, clock, events, share)


def _train(
    cfg: TrainConfig,
    run: RunFolder | None,
    context: RunContext,
    log: Callable[[str], None],
    state: dict | None,
    clock: Timings,
    events: Events,
    share: CacheShare | None = None,
) -> Path:
    """`train` once the settings, the device and precision (`context`) and (resuming) the checked resume state are
    known."""
    with clock.stage("startup"):
        cfg, run, splits, base, weights, model, identity = _setup(cfg, run, context.device, log, state, clock)
    try:
        with clock.stage("cache"):
            model = context.prepare(model)
            source = _batch_source(cfg, model, splits, context, identity, run.features, clock, share)
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
        quiet = distributed.rank() > 0  # no progress bar, and none of the files and lines rank 0 makes
        trainer = Trainer(
            cfg, run, source, optimizer, scheduler, context, log, progress, weights=weights, quiet=quiet, clock=clock
        )
        trainer.events = Events([*_subscribers(trainer, identity, meta), *events.subscribers])
    with clock.stage("epochs"):
        trainer.fit()
    scores = _finish(trainer, identity, meta)
    _say_where_to_go(run, progress, base, cfg, log, clock, scores)
    return run.path


def _subscribers(trainer: Trainer, identity: dict, meta: dict) -> list[Callback]:
    """What the run does around its epochs, as the settings and this process's rank ask (see `callbacks.py`)."""
    cfg, progress, first = trainer.cfg, trainer.progress, not trainer.quiet
    subscribers: list[Callback] = [Checkpoints(identity, meta)] if first else []
    if first and cfg.tensorboard:
        subscribers.append(TensorBoard(Board(trainer.run.path, cfg.class_names, cfg.class_colors, progress.epoch)))
    subscribers += [EpochLog(), ResumeHint()]
    if first:
        steps = trainer.source.steps_per_epoch() * (cfg.epochs - progress.epoch)
        faster = faster_options(cfg.imgsz, trainer.source.model.backbone.patch_size, cfg.arch, trainer.context.device)
        what = f"training {cfg.epochs - progress.epoch} epoch(s)"
        subscribers.append(StepEstimate(Estimate(what, steps, "step", trainer.context.device, after=3, faster=faster)))
    return subscribers


def _finish(trainer: Trainer, identity: dict, meta: dict) -> dict | None:
    """The final model, curves and valid_preds (rank 0: the other processes are done, none waits in a collective
    that could time out); stopped here, it says how to continue (resuming makes them again)."""
    progress, cfg = trainer.progress, trainer.cfg
    try:
        with trainer.clock.stage("finish"):
            if distributed.rank() == 0:
                final_meta = meta | {"epoch": cfg.epochs, "metrics": progress.history[-1] if progress.history else {}}
                return finish_run(
                    trainer.run,
                    trainer.source.model,
                    identity,
                    final_meta,
                    history=progress.history,
                    valid_pairs=trainer.source.valid_ds.pairs,
                    cfg=cfg,
                    context=trainer.context,
                    clock=trainer.clock,
                )
    except BaseException as err:
        trainer.log(how_to_continue(trainer.run, progress.epoch, cfg.epochs, err))
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
        f"{stopped_by(err)} while caching features: the features of {kept} of {total} images are kept in "
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
    context: RunContext,
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
        context,
        batch=cfg.batch,
        seed=cfg.seed,
        workers=cfg.loader_workers,
        cache=cfg.cache,
        cache_views=cfg.views,
        cache_dir=cfg.feature_cache_dir,
        cache_memory_gb=cfg.cache_memory_gb,
        identity=identity,
        progress_dir=progress_dir,
        clock=clock,
        share=share,
    )


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


def _quiet(*_args: object) -> None:
    """Log sink for processes other than rank 0."""
