"""Where training batches come from: the live image pipeline, or cached frozen-backbone features.

Under torchrun each process takes its share of every batch; an empty share keeps the
collectives in step when there are more processes than images in a batch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ..data.augment import denormalize, normalize_batch, sample_seed
from ..data.datasets import SegmentationDataset, Undecoded
from ..models.segmentation import SegmentationModel
from ..utils.runtime import RunContext
from . import distributed
from .features import CachePlan, CacheShare, Contents, FeatureCache, cache_key, free_ram, load_or_extract, plan_store
from .timings import Timings


class _Batches:
    """A batch sampler whose batches are set before each epoch (the loader's workers stay alive)."""

    def __init__(self) -> None:
        self.items: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _least_free(device: torch.device) -> dict[str, int]:
    """Free GPU memory (this process's GPU) and RAM, the least over all processes: the plan must fit everywhere."""
    free = torch.tensor(
        [torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0, free_ram()], dtype=torch.float64
    )
    cuda, cpu = distributed.all_min(free).tolist()
    return {"cuda": int(cuda), "cpu": int(cpu)} if device.type == "cuda" else {"cpu": int(cpu)}


class BatchSource:
    """(inputs, masks) batches for training and validation, and the module that turns inputs into logits.

    With a frozen backbone and the cache on, inputs are cached token grids and the trainable
    module is the head; otherwise inputs are images and the trainable module is the whole model.
    """

    def __init__(
        self,
        model: SegmentationModel,
        datasets: tuple[SegmentationDataset, SegmentationDataset],
        context: RunContext,
        *,
        batch: int,
        seed: int,
        workers: int = 0,
        cache: bool = True,
        cache_views: int = 1,
        cache_dir: str | Path | None = None,
        cache_memory_gb: float | None = None,
        identity: dict | None = None,
        progress_dir: str | Path | None = None,
        clock: Timings | None = None,
        share: CacheShare | None = None,
    ) -> None:
        self.train_ds, self.valid_ds = datasets
        self.model, self.context = model, context
        self.batch, self.seed, self.workers = batch, seed, workers
        self.cached = cache and not model.fine_tune
        self.train_cache: FeatureCache | None = None
        self.valid_cache: FeatureCache | None = None
        self.cache_seconds = 0.0
        self.progress_dir = Path(progress_dir) if progress_dir else None
        self._loaders: dict = {}
        self.clock = clock or Timings()
        if self.cached:
            self._extract(cache_views, Path(cache_dir) if cache_dir else None, cache_memory_gb, identity or {}, share)
        self.trainable = model.head if self.cached else model
        self.net = self.trainable
        if distributed.world_size() > 1:
            distributed.sync_batchnorm(self.trainable)  # batch statistics of the whole batch, as one process
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.trainable, device_ids=ids)

    @property
    def device(self) -> torch.device:
        """Where batches go: the run context's device."""
        return self.context.device

    def _extract(
        self, views: int, cache_dir: Path | None, memory_gb: float | None, identity: dict, share: CacheShare | None
    ) -> None:
        """The train and valid caches: from `share` when it holds them, else loaded or extracted (with what
        `share` asks for every run, then kept there); this run reads its own head's part."""
        model, device = self.model, self.device
        mine = Contents.of(model)
        contents = share.contents | mine if share is not None else mine
        extract_batch = max(self.batch, 32 if device.type == "cuda" else 16)
        self.plan = distributed.broadcast(self._plan(views, contents, memory_gb, extract_batch, cache_dir))
        store = {"cuda": device, "cpu": torch.device("cpu")}.get(self.plan.kind) or Path(
            cache_dir or tempfile.gettempdir()
        )
        common = {
            "model": model,
            "context": self.context,
            "batch": extract_batch,
            "workers": self.workers,
            "dtype": self.plan.dtype,
            "store": store,
            "clock": self.clock,
            "contents": contents,
        }
        keys = {
            "train": cache_key(self.train_ds, model, views, identity, contents),
            "valid": cache_key(self.valid_ds, model, 1, identity, contents),
        }
        self.chunk_dirs = {name: self.progress_dir / key if self.progress_dir else None for name, key in keys.items()}
        start = time.perf_counter()
        caches = {}
        for name, dataset, n in (("train", self.train_ds, views), ("valid", self.valid_ds, 1)):
            cache = share.caches.get(keys[name]) if share is not None else None
            if cache is None:
                cache = load_or_extract(
                    cache_dir,
                    keys[name],
                    dataset=dataset,
                    views=n,
                    desc=f"caching {name} features",
                    chunks=self.chunk_dirs[name],
                    **common,
                )
                if share is not None:
                    share.caches[keys[name]] = cache
            caches[name] = cache.narrowed(mine, model.backbone.embed_dim)
        self.train_cache, self.valid_cache = caches["train"], caches["valid"]
        self.cache_seconds = time.perf_counter() - start

    def _plan(
        self, views: int, contents: Contents, memory_gb: float | None, batch: int, cache_dir: Path | None
    ) -> CachePlan:
        """Where the cache of `views` train views and the valid images, holding `contents`, goes."""
        model, (h, w) = self.model, self.train_ds.imgsz
        p = model.backbone.patch_size
        return plan_store(
            views * len(self.train_ds) + len(self.valid_ds),
            (contents.layers * model.backbone.embed_dim, h // p, w // p),
            (h, w),
            self.device,
            limit_gb=memory_gb,
            batch=batch,
            disk=cache_dir,
            free=_least_free(self.device),
            extra_per_item=3 * h * w if contents.images else 0,
            width=model.backbone.embed_dim,
        )

    def describe_cache(self) -> str:
        """One line on what the cache holds and where."""
        train, valid = self.train_cache, self.valid_cache
        return (
            f"cached {train.views} view(s) x {train.count} train + {valid.count} valid images in "
            f"{self.cache_seconds:.1f}s ({self.plan.describe()})"
        )

    def steps_per_epoch(self) -> int:
        """Batches in one training epoch."""
        return -(-len(self.train_ds) // self.batch)

    def _loader(self, dataset: SegmentationDataset) -> tuple[torch.utils.data.DataLoader, _Batches]:
        """One data loader per split for the whole run: its worker processes live from epoch to epoch."""
        if dataset not in self._loaders:
            batches = _Batches()
            loader = torch.utils.data.DataLoader(
                Undecoded(dataset),  # uint8 until the device, normalised there
                batch_sampler=batches,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,
            )
            self._loaders[dataset] = (loader, batches)
        return self._loaders[dataset]

    def _batches(
        self, dataset: SegmentationDataset, cache: FeatureCache | None, view: int, order: torch.Tensor
    ) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """This process's share of each batch of `order` (all of it without torchrun): (inputs, masks), where
        `inputs` are the arguments of `net` (cached features, or images)."""
        shards = [distributed.shard(order[i : i + self.batch]) for i in range(0, len(order), self.batch)]
        if cache is not None:
            for idx in shards:
                yield cache.batch(view, idx, self.device)
            return
        loader, batches = self._loader(dataset)
        batches.items = [[(view, i) for i in idx.tolist()] for idx in shards if len(idx)]
        items = iter(loader)
        h, w = dataset.imgsz
        for idx in shards:
            if len(idx):
                images, masks = next(items)
            else:  # more processes than images in this batch: an empty share keeps the collectives in step
                images, masks = torch.empty(0, 3, h, w, dtype=torch.uint8), torch.empty(0, h, w, dtype=torch.uint8)
            pixels = normalize_batch(images.to(self.device, non_blocking=True), dataset.mean, dataset.std)
            yield (pixels,), masks.to(self.device, non_blocking=True).long()

    def train_batches(self, epoch: int) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """(inputs, masks) batches for one epoch, in an order seeded by (seed, epoch)."""
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
        order = torch.randperm(len(self.train_ds), generator=generator)
        self.train_ds.set_epoch(epoch)
        yield from self._batches(self.train_ds, self.train_cache, epoch, order)

    def valid_batches(self) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """(inputs, masks) batches over the validation split."""
        yield from self._batches(self.valid_ds, self.valid_cache, 0, torch.arange(len(self.valid_ds)))

    def valid_sample(self, n: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        """The first `n` valid images as `net`'s inputs, their masks, and the pictures (uint8) at the masks' size."""
        index = torch.arange(min(n, len(self.valid_ds)))
        items = [self.valid_ds[int(i)] for i in index]
        pixels = torch.stack([image for image, _ in items])
        pictures = denormalize(pixels, self.valid_ds.mean, self.valid_ds.std)
        if self.valid_cache is not None:
            inputs, masks = self.valid_cache.batch(0, index, self.device)
        else:
            inputs, masks = (pixels.to(self.device),), torch.stack([mask for _, mask in items]).to(self.device)
        return inputs, masks, pictures
