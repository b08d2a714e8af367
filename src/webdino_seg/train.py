"""The training loop and its run folder: checkpoints, metrics.csv, config.yaml, plots, validation overlays."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from . import distributed
from .backbone import check_image_size
from .checkpoint import backbone_identity, build_backbone, save_model
from .data import DataError, SegmentationDataset, sample_seed
from .features import cache_key, load_or_extract, plan_store
from .heads import create_head
from .imageio import VOID, read_image, read_mask
from .io import atomic_write, atomic_write_text
from .metrics import ConfusionMatrix
from .model import SegmentationModel, upsample
from .overlay import overlay
from .predict import Predictor, autocast, resolve_device, save_png
from .variants import get_variant

LAST = "last.pth"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stopped being finite)."""


@dataclass
class TrainConfig:
    """Every training setting; written to ``config.yaml`` in the run folder and read back on resume."""

    data: str
    out: str = "runs/train"
    arch: str = "webdino-300m"
    weights: str | None = None  # path, URL, Hub id, "random"; None: the variant's official .pth URL
    fine_tune: bool = False
    num_classes: int = 2
    class_names: list[str] | None = None
    mask_mode: str = "ids"
    head: str = "simple"
    imgsz: tuple[int, int] = (644, 644)
    lr: float = 1e-4
    batch: int = 8
    epochs: int = 60
    scheduler: bool = False
    scheduler_epochs: list[int] = field(default_factory=lambda: [45])
    device: str = "auto"
    workers: int = 4
    seed: int = 42
    cache: bool = True
    cache_views: int = 4
    feature_cache_dir: str | None = None
    cache_memory_gb: float | None = None  # beyond this the cache is memory-mapped on disk (None: half the free)
    amp: bool = True
    skip_bad: bool = False

    def __post_init__(self) -> None:
        self.imgsz = tuple(self.imgsz)
        check_image_size(*self.imgsz)
        if self.class_names is None:
            self.class_names = (
                ["background", "person"] if self.num_classes == 2 else [f"class{i}" for i in range(self.num_classes)]
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names given for {self.num_classes} classes")
        for name, value in (("--epochs", self.epochs), ("--batch", self.batch), ("--cache-views", self.cache_views)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    def to_yaml(self) -> str:
        """The settings as YAML."""
        data = dataclasses.asdict(self)
        data["imgsz"] = list(self.imgsz)
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, path: Path) -> TrainConfig:
        """Read settings written by `to_yaml`."""
        return cls(**yaml.safe_load(path.read_text()))


def new_run_dir(out: str | Path) -> Path:
    """`out` itself if new or empty, else the first free ``out-2``, ``out-3``..."""
    base = Path(out)
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def _check_data(root: Path) -> None:
    if not root.is_dir():
        raise DataError(
            f"--data {root}: folder not found. Training needs a folder with train_images/ train_masks/ valid_images/ "
            "valid_masks/ (masks: PNG class ids, 255 = void). Make one from the Penn-Fudan release with "
            "`webdino-seg prepare-data --source PennFudanPed --out data/pennfudan`, or use the bundled "
            "examples/pennfudan-sample."
        )


def _datasets(cfg: TrainConfig, mean: tuple, std: tuple) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Both splits, every pair decoded and checked once, before any backbone is built or weights fetched."""
    common = {
        "imgsz": cfg.imgsz,
        "mean": mean,
        "std": std,
        "num_classes": cfg.num_classes,
        "mask_mode": cfg.mask_mode,
        "seed": cfg.seed,
        "on_bad": "skip" if cfg.skip_bad else "error",
        "validate": True,
    }
    train_ds = SegmentationDataset(cfg.data, "train", augment=True, **common)
    return train_ds, SegmentationDataset(cfg.data, "valid", augment=False, **common)


class _Source:
    """Where batches come from: the live image pipeline, or cached backbone features."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: SegmentationModel,
        device: torch.device,
        identity: dict,
        datasets: tuple[SegmentationDataset, SegmentationDataset],
    ) -> None:
        self.train_ds, self.valid_ds = datasets
        self.cfg, self.model, self.device = cfg, model, device
        self.cached = cfg.cache and not cfg.fine_tune
        if self.cached:
            cache_dir = Path(cfg.feature_cache_dir) if cfg.feature_cache_dir else None
            h, w = (side // model.backbone.patch_size for side in cfg.imgsz)
            values = (cfg.cache_views * len(self.train_ds) + len(self.valid_ds)) * model.backbone.embed_dim * h * w
            # bf16 on the GPU and on disk; float32 in CPU memory keeps CPU runs equal to uncached ones
            self.store_kind = distributed.broadcast(plan_store(values * 4, device, cfg.cache_memory_gb))
            store = {"cuda": device, "cpu": torch.device("cpu")}.get(self.store_kind) or Path(
                cache_dir or tempfile.gettempdir()
            )
            dtype = torch.float32 if self.store_kind == "cpu" else torch.bfloat16
            kwargs = {
                "model": model,
                "device": device,
                "batch": max(cfg.batch, 32 if device.type == "cuda" else 16),
                "workers": cfg.workers,
                "dtype": dtype,
                "store": store,
            }
            start = time.perf_counter()
            self.train_cache = load_or_extract(
                cache_dir,
                cache_key(self.train_ds, model, cfg.cache_views, identity),
                dataset=self.train_ds,
                views=cfg.cache_views,
                desc="caching train features",
                **kwargs,
            )
            self.valid_cache = load_or_extract(
                cache_dir,
                cache_key(self.valid_ds, model, 1, identity),
                dataset=self.valid_ds,
                views=1,
                desc="caching valid features",
                **kwargs,
            )
            self.cache_seconds = time.perf_counter() - start

        self.trainable = trainable = model.head if self.cached else model
        self.net = trainable
        if distributed.world_size() > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(trainable, device_ids=ids)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Token-grid logits from images (live) or from cached features."""
        return self.net(inputs)

    def _batches(self, dataset: SegmentationDataset, cache, view: int, order: torch.Tensor):
        """This process's share of each batch of `order` (all of it without torchrun)."""
        shards = [distributed.shard(order[i : i + self.cfg.batch]) for i in range(0, len(order), self.cfg.batch)]
        if self.cached:
            for idx in shards:
                yield cache.batch(view, idx, self.device)
            return
        loader = iter(
            torch.utils.data.DataLoader(
                dataset,
                batch_sampler=[idx.tolist() for idx in shards if len(idx)],
                num_workers=self.cfg.workers,
                pin_memory=self.device.type == "cuda",
            )
        )
        h, w = self.cfg.imgsz
        for idx in shards:
            if len(idx):
                images, masks = next(loader)
            else:  # more processes than images in this batch: an empty share keeps the collectives in step
                images, masks = torch.empty(0, 3, h, w), torch.empty(0, h, w, dtype=torch.long)
            yield images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)

    def train_batches(self, epoch: int):
        """(inputs, masks) batches for one epoch, in an order seeded by (seed, epoch)."""
        generator = torch.Generator().manual_seed(sample_seed(self.cfg.seed, epoch, -1))
        order = torch.randperm(len(self.train_ds), generator=generator)
        self.train_ds.set_epoch(epoch)
        yield from self._batches(self.train_ds, getattr(self, "train_cache", None), epoch, order)

    def valid_batches(self):
        """(inputs, masks) batches over the validation split."""
        order = torch.arange(len(self.valid_ds))
        yield from self._batches(self.valid_ds, getattr(self, "valid_cache", None), 0, order)


def _loss(logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    up = upsample(logits.float(), masks.shape[-2:])
    # max(1).indices equals argmax(1) and avoids argmax's slow strided path on the CPU (65 -> 5 ms at 8x2x224x224)
    return F.cross_entropy(up, masks, ignore_index=VOID, reduction="sum"), up.max(1).indices


def _save_last(
    run: Path, epoch: int, model: SegmentationModel, optimizer, scheduler, history: list, best: dict
) -> None:
    payload = {
        "format": "webdino-seg/last",
        "epoch": epoch,
        "head": model.head.state_dict(),
        "backbone": model.backbone.state_dict() if model.fine_tune else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler else None,
        "history": history,
        "best": best,
    }
    atomic_write(run / LAST, lambda f: torch.save(payload, f))


def _write_metrics_csv(run: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run / "metrics.csv", buf.getvalue())


def train(cfg: TrainConfig, resume: str | Path | None = None, log=print) -> Path:
    """Train a head (or fine-tune) as `cfg` says; return the run folder. `resume` continues a run folder."""
    if resume is not None:
        run = Path(resume)
        if not (run / LAST).exists() or not (run / "config.yaml").exists():
            raise FileNotFoundError(f"--resume {run}: no {LAST} and config.yaml there; is it a run folder?")
        cfg = TrainConfig.from_yaml(run / "config.yaml")
        for stale in run.glob(".*.tmp"):  # half-written files of the interrupted run
            stale.unlink()
    _check_data(Path(cfg.data))
    rank, world, local_rank = distributed.setup()
    if rank > 0:
        log = _quiet
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    variant = get_variant(cfg.arch)
    datasets = _datasets(cfg, variant.mean, variant.std)
    weights = cfg.weights or variant.url
    if weights in (None, "random"):
        log(f"WARNING: {cfg.arch} uses RANDOM weights (--weights random): a smoke test, not a real model")
        weights = "random"
    backbone = build_backbone(variant, weights, cfg.seed)
    identity = backbone_identity(backbone, weights, cfg.seed)
    torch.manual_seed(cfg.seed)
    head = create_head(cfg.head, backbone.embed_dim, cfg.num_classes)
    model = SegmentationModel(backbone, head, fine_tune=cfg.fine_tune).to(device)
    source = _Source(cfg, model, device, identity, datasets)  # before any folder is made
    if resume is None:
        run = new_run_dir(cfg.out) if rank == 0 else None
        run = distributed.broadcast(run)  # only rank 0 writes; the others need the path to resume
        if rank == 0:
            atomic_write_text(run / "config.yaml", cfg.to_yaml())
    processes = f"  processes: {world}" if world > 1 else ""
    log(f"run folder: {run}  device: {device}{processes}  backbone: {cfg.arch} ({identity['weights']})")
    if source.cached:
        log(
            f"cached {source.train_cache.views} view(s) x {source.train_cache.count} train + "
            f"{source.valid_cache.count} valid images in {source.cache_seconds:.1f}s "
            f"({source.train_cache.nbytes() / 2**20:.0f} MiB in {source.store_kind})"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    scheduler = (
        torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.scheduler_epochs), gamma=0.1)
        if cfg.scheduler
        else None
    )
    history: list[dict] = []
    best = {"loss": math.inf, "miou": -math.inf, "iou_epoch": 0, "head": None}
    start_epoch = 0
    if resume is not None:
        state = torch.load(run / LAST, map_location="cpu", weights_only=True)
        model.head.load_state_dict(state["head"])
        if state["backbone"] is not None:
            model.backbone.load_state_dict(state["backbone"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler and state["scheduler"]:
            scheduler.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
        log(f"resuming {run} after epoch {start_epoch}")
    meta = {
        "imgsz": list(cfg.imgsz),
        "class_names": cfg.class_names,
        "mean": list(variant.mean),
        "std": list(variant.std),
        "config": dataclasses.asdict(cfg) | {"imgsz": list(cfg.imgsz)},
        "head_name": cfg.head,
    }

    epoch_log = log  # rank > 0 logs nothing
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        train_cm, total_loss, steps = ConfusionMatrix(cfg.num_classes), 0.0, 0
        bar = tqdm(
            source.train_batches(epoch),
            total=math.ceil(len(source.train_ds) / cfg.batch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=rank > 0,
        )
        for step, (inputs, masks) in enumerate(bar):
            valid = distributed.all_sum((masks != VOID).sum())  # over the whole batch, all processes
            if valid == 0:
                continue
            with autocast(device, cfg.amp):
                logits = source.forward(inputs)
            loss_sum, pred = _loss(logits, masks)
            # each process holds part of the batch; DDP averages gradients, hence the factor `world`
            loss = loss_sum / valid * world
            step_loss = distributed.all_sum(loss_sum.detach() / valid).item()
            if not math.isfinite(step_loss):
                last = f"{run / LAST} (epoch {start_epoch if not history else history[-1]['epoch']})"
                raise TrainingError(
                    f"loss became {step_loss} at epoch {epoch + 1}, step {step + 1}; stopped. Last good checkpoint: "
                    f"{last if (run / LAST).exists() else 'none yet'}. Try a lower --lr."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            train_cm.update(pred.detach(), masks)
            total_loss += step_loss
            steps += 1
            bar.set_postfix(loss=f"{step_loss:.4f}")
        bar.close()
        distributed.all_sum(train_cm.mat)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler:
            scheduler.step()
        valid_loss, valid_cm = evaluate_source(source, cfg, device)
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": total_loss / max(steps, 1),
            "train_pixel_acc": train_cm.pixel_accuracy(),
            "train_miou": train_cm.miou(),
            "valid_loss": valid_loss,
            "valid_pixel_acc": valid_cm.pixel_accuracy(),
            "valid_miou": valid_cm.miou(),
            **{f"valid_iou_{n}": v for n, v in zip(cfg.class_names, valid_cm.iou().tolist(), strict=True)},
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        meta_now = meta | {"epoch": epoch + 1, "metrics": row}
        if row["valid_loss"] < best["loss"]:
            best["loss"] = row["valid_loss"]
            if rank == 0:
                save_model(run / "best_model_loss.pth", model, identity, meta_now)
        if row["valid_miou"] > best["miou"]:
            best.update(miou=row["valid_miou"], iou_epoch=epoch + 1)
            if rank == 0:
                save_model(run / "best_model_iou.pth", model, identity, meta_now)
        if rank == 0:
            _save_last(run, epoch + 1, model, optimizer, scheduler, history, best)
            _write_metrics_csv(run, history)
        distributed.barrier()  # no process runs ahead of what is on disk
        epoch_log(
            f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_pixel_acc']:.4f} "
            f"mIoU {row['train_miou']:.4f} | valid loss {row['valid_loss']:.4f} acc {row['valid_pixel_acc']:.4f} "
            f"mIoU {row['valid_miou']:.4f} | lr {lr:.2e} | {row['seconds']:.1f}s"
        )

    if rank == 0:
        final_meta = meta | {"epoch": cfg.epochs, "metrics": history[-1] if history else {}}
        save_model(run / "final_model.pth", model, identity, final_meta)
        from .plots import save_curves

        save_curves(history, run)
        write_valid_preds(run, model, source.valid_ds, cfg, device)
    distributed.barrier()
    log(f"best valid mIoU {best['miou']:.4f} at epoch {best['iou_epoch']}; artifacts in {run}")
    return run


def _quiet(*_args: object) -> None:
    """Log sink for processes other than rank 0."""


@torch.no_grad()
def evaluate_source(source: _Source, cfg: TrainConfig, device: torch.device) -> tuple[float, ConfusionMatrix]:
    """Validation loss (per non-void pixel) and confusion matrix over the whole split."""
    source.model.eval()
    cm, loss_sum, pixels = ConfusionMatrix(cfg.num_classes), 0.0, 0
    for inputs, masks in source.valid_batches():
        with autocast(device, cfg.amp):
            logits = source.trainable(inputs)  # unwrapped: no collectives in evaluation
        batch_loss, pred = _loss(logits, masks)
        loss_sum += batch_loss.item()
        pixels += int((masks != VOID).sum())
        cm.update(pred, masks)
    totals = distributed.all_sum(torch.tensor([loss_sum, float(pixels)], dtype=torch.float64))
    distributed.all_sum(cm.mat)
    return float(totals[0] / max(totals[1], 1.0)), cm


def write_valid_preds(
    run: Path, model: SegmentationModel, dataset: SegmentationDataset, cfg: TrainConfig, device: torch.device
) -> None:
    """``valid_preds/<name>.png``: ground truth beside the best-mIoU model's prediction, at full resolution."""
    best_path = run / "best_model_iou.pth"
    if not best_path.exists():
        return
    state = torch.load(best_path, map_location="cpu", weights_only=True)
    backbone = model.backbone
    if state["backbone"] is not None:
        backbone = copy.deepcopy(backbone)
        backbone.load_state_dict(state["backbone"])
    head = copy.deepcopy(model.head)
    head.load_state_dict(state["head"])
    best = SegmentationModel(backbone, head, fine_tune=model.fine_tune)
    predictor = Predictor(best, cfg.imgsz, model.backbone.cfg.mean, model.backbone.cfg.std, cfg.class_names, device)
    out = run / "valid_preds"
    out.mkdir(exist_ok=True)
    for image_path, mask_path in tqdm(dataset.pairs, desc="valid_preds", leave=False):
        image = read_image(image_path)
        truth = read_mask(mask_path, cfg.mask_mode)
        pred = predictor.predict(image)
        gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
        save_png(out / f"{image_path.stem}.png", np.concatenate([overlay(image, truth), gap, overlay(image, pred)], 1))
