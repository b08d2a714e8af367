"""Cache of frozen-backbone features: each image (and augmented view) goes through the backbone once.

View ``v`` of image ``i`` is the augmentation the live pipeline would draw at epoch ``v``, so a
cache with as many views as epochs trains on exactly the data an uncached run sees; fewer views
repeat them (epoch ``e`` uses view ``e % views``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.augment import normalize_batch
from ..data.datasets import AllViews, SegmentationDataset
from ..models.segmentation import SegmentationModel
from ..utils.download import sha256_file
from ..utils.files import atomic_write
from ..utils.runtime import RunContext
from . import distributed
from .eta import Estimate, duration, faster_options
from .timings import Timings


@dataclass(frozen=True)
class Contents:
    """What a cache holds for each view: the last `layers` layers' token grids, and the image when `images`."""

    layers: int = 1
    images: bool = False

    @classmethod
    def of(cls, model: SegmentationModel) -> Contents:
        """What `model`'s head reads."""
        return cls(getattr(model.head, "layers", 1), model.needs_image)

    def __or__(self, other: Contents) -> Contents:
        """What serves both: the more layers, and the image when either reads it."""
        return Contents(max(self.layers, other.layers), self.images or other.images)


@dataclass
class CacheShare:
    """Feature caches that the runs of one process share (a sweep): each extracted once with `contents`, what
    every run's head reads, kept here by key; a run reads its own head's part (`FeatureCache.narrowed`)."""

    contents: Contents
    caches: dict = field(default_factory=dict)


class FeatureCache:
    """Backbone feature grids and their masks (and, for heads that read the image, the augmented images as
    uint8) for ``views`` passes over a dataset."""

    def __init__(
        self,
        features: torch.Tensor,
        masks: torch.Tensor,
        views: int,
        *,
        images: torch.Tensor | None = None,
        mean: tuple[float, ...] = (0.0, 0.0, 0.0),
        std: tuple[float, ...] = (1.0, 1.0, 1.0),
    ) -> None:
        self.features, self.masks, self.views, self.images = features, masks, views, images
        self.count = features.shape[0] // views
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def batch(
        self, view: int, index: torch.Tensor, device: torch.device
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The head's inputs ((features,), or (features, normalised images); float32) and the masks (int64) of
        images `index` in `view`, on `device`.

        From CPU memory or disk to a GPU the rows are gathered into pinned memory, so the copy overlaps.
        """
        rows = (view % self.views) * self.count + index.to(self.features.device)
        parts = [self.features[rows].contiguous(), self.masks[rows]] + (
            [self.images[rows]] if self.images is not None else []
        )
        if device.type == "cuda" and parts[0].device.type == "cpu":
            parts = [part.pin_memory() for part in parts]
        parts = [part.to(device, non_blocking=True) for part in parts]
        inputs: tuple[torch.Tensor, ...] = (parts[0].float(),)
        if self.images is not None:
            images = parts[2].float().div_(255)
            inputs += ((images - self.mean.to(device)) / self.std.to(device),)
        return inputs, parts[1].long()

    def narrowed(self, contents: Contents, dim: int) -> FeatureCache:
        """The part of this cache a head reading `contents` uses (the last layers' channels, the images only if
        it reads them), as views: nothing is copied. Its batches equal those of a cache made for that head."""
        features = self.features[:, self.features.shape[1] - contents.layers * dim :]
        out = FeatureCache(features, self.masks, self.views, images=self.images if contents.images else None)
        out.mean, out.std = self.mean, self.std
        return out

    def nbytes(self) -> int:
        """Memory the cache holds."""
        images = self.images.numel() if self.images is not None else 0
        return self.features.numel() * self.features.element_size() + self.masks.numel() + images


@dataclass(frozen=True)
class CachePlan:
    """Where a feature cache goes, in which dtype, and what it needs."""

    kind: str  # "cuda", "cpu" or "disk"
    dtype: torch.dtype
    nbytes: int  # features and masks in that dtype
    working_bytes: int  # what extraction itself needs on the device besides the cache

    def describe(self) -> str:
        """E.g. ``1.2 GiB bf16 in cuda``."""
        return f"{self.nbytes / 2**30:.2f} GiB {str(self.dtype).removeprefix('torch.')} in {self.kind}"


def free_ram() -> int:
    """Bytes of RAM available now."""
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def plan_store(
    items: int,
    feature_shape: tuple[int, int, int],
    mask_shape: tuple[int, int],
    device: torch.device,
    *,
    limit_gb: float | None = None,
    batch: int = 32,
    disk: Path | None = None,
    free: dict[str, int] | None = None,
    extra_per_item: int = 0,
    width: int | None = None,
) -> CachePlan:
    """Plan a cache of `items` feature grids (dim, h, w) with their uint8 masks (H, W).

    GPU memory holds it in bf16 when it fits together with the extraction's own working memory; CPU
    memory holds it in bf16 on CUDA runs and in float32 on CPU runs (so they equal uncached runs);
    else it is memory-mapped on disk (bf16) at `disk`, which must have the room. It fits when it
    takes at most `limit_gb`, or, without a limit, half of what is free. `free` replaces the
    measured free bytes per kind (``cuda``, ``cpu``, ``disk``) in tests. `width` is the backbone's token width
    (default: `dim`, as for a head reading one layer).
    """
    free = free or {}
    limit = None if limit_gb is None else limit_gb * 2**30
    dim, h, w = feature_shape
    mask_bytes = items * (math.prod(mask_shape) + extra_per_item)  # masks, and images for heads that read them

    def size(dtype: torch.dtype) -> int:
        return items * dim * h * w * torch.empty(0, dtype=dtype).element_size() + mask_bytes

    # extraction on the device: a batch of float32 images plus ~16 bf16 activations of the token sequence
    # a batch of float32 images, ~22 activations of the token sequence at the backbone's own `width` (bf16 on a
    # GPU, float32 on a CPU), and 2 more per layer a head reads (kept, then concatenated). Measured on the CPU
    # (benchmarks/working_memory.py: peak RSS growth of a forward pass, Web-DINO 300M, batch 4, 448x448, two runs):
    # simple 343-347 MiB (this: 362), linear4 318-442 (458), multilayer 353-365 (458), guided 344 (362)
    width = width or dim
    act = 2 if device.type == "cuda" else 4
    tokens = (20 + 2 * max(1, dim // width)) * (h * w + 1) * width * act
    working = batch * (3 * mask_shape[0] * mask_shape[1] * 4 + tokens)
    if device.type == "cuda":
        room = free.get("cuda") or torch.cuda.mem_get_info(device)[0]
        need = size(torch.bfloat16)
        if need + working <= (limit if limit is not None else room / 2):
            return CachePlan("cuda", torch.bfloat16, need, working)
    cpu_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    need = size(cpu_dtype)
    if need <= (limit if limit is not None else (free.get("cpu") or free_ram()) / 2):
        return CachePlan("cpu", cpu_dtype, need, working)
    need = size(torch.bfloat16)
    where = Path(disk or tempfile.gettempdir())
    probe = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    room = free.get("disk") or shutil.disk_usage(probe).free
    if need > 0.9 * room:
        raise OSError(
            errno.ENOSPC,
            f"the feature cache needs {need / 2**30:.1f} GiB, more than fits in memory (--cache-memory-gb) and "
            f"more than the {room / 2**30:.1f} GiB free on disk at {where}; use --feature-cache-dir on a larger "
            "disk, fewer --cache-views, a smaller --imgsz, or --no-cache",
        )
    return CachePlan("disk", torch.bfloat16, need, working)


def allocate(
    shape: tuple[int, ...], dtype: torch.dtype, store: torch.device | Path, shared_name: str | None = None
) -> torch.Tensor:
    """An empty tensor in memory on `store`, or, when `store` is a folder, backed by a file there.

    The file is unlinked at once: the mapping lives as long as the tensor and nothing is left behind.
    With `shared_name` the file is the one every process maps (see `_shared_files`), not unlinked here.
    """
    if isinstance(store, torch.device):
        return torch.zeros(shape, dtype=dtype, device=store)
    if shared_name is not None:
        return torch.from_file(shared_name, shared=True, size=math.prod(shape), dtype=dtype).view(shape)
    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=store, prefix="features-", suffix=".bin")
    os.close(fd)
    try:
        return torch.from_file(name, shared=True, size=math.prod(shape), dtype=dtype).view(shape)
    finally:
        os.unlink(name)


def _node_files(store: Path, count: int) -> list[str]:
    """Names of `count` new files that the processes of this machine map together: made by the machine's first
    process, named by a run-wide token and the machine's index (several machines may share `store`)."""
    token = distributed.broadcast(uuid.uuid4().hex[:12] if distributed.rank() == 0 else None)
    names = [str(store / f"webdino-seg-{token}-node{distributed.node()}-{i}.bin") for i in range(count)]
    if distributed.local_rank() == 0:
        store.mkdir(parents=True, exist_ok=True)
        for name in names:
            open(name, "xb").close()
    distributed.barrier()
    return names


def _node_store(need: int, store: torch.device | Path) -> Path:
    """Where this machine's processes share the cache: /dev/shm where it has the room on every machine (a
    container's is often 64 MB), else memory-mapped files in `store` (a folder) or the temp folder."""
    if isinstance(store, Path):
        return store
    shm, folder = Path("/dev/shm"), Path(tempfile.gettempdir())
    free = shutil.disk_usage(shm).free if shm.is_dir() else 0
    if not distributed.any_true(need > 0.9 * free):
        return shm
    if distributed.rank() == 0:
        print(
            f"note: /dev/shm has {free / 2**20:.0f} MiB free, the shared feature cache needs {need / 2**20:.0f} "
            f"MiB: using memory-mapped files in {folder} instead (in Docker, --shm-size raises it)",
            file=sys.stderr,
        )
    return folder


def cache_key(
    dataset: SegmentationDataset,
    model: SegmentationModel,
    views: int,
    identity: dict,
    contents: Contents | None = None,
) -> str:
    """A hash of everything the features depend on: image and mask bytes, augmentation, backbone, size, and what
    is kept (`contents`, default: what `model`'s head reads)."""
    contents = contents or Contents.of(model)
    digest = hashlib.sha256()
    for image, mask in dataset.pairs:  # the files' hashes where training already made them (the same key)
        digest.update(bytes.fromhex(dataset.digests.get(image.name) or sha256_file(image)))
        digest.update(bytes.fromhex(dataset.mask_digests.get(image.name) or sha256_file(mask)))
    recipe = {
        "imgsz": dataset.imgsz,
        "augment": dataset.augment,
        "seed": dataset.seed,
        "views": views,
        "mask_mode": dataset.mask_mode,
        "coding": dataset.coding.to_dict(),  # the cached masks are read through it
        "transform": repr(dataset.transform),
        "mean": dataset.mean,
        "std": dataset.std,
        "backbone": {k: identity.get(k) for k in ("arch", "config", "weights", "sha256", "fingerprint")},
        "layers": contents.layers,
        "images": contents.images,
    }
    digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


@torch.inference_mode()
def extract(
    model: SegmentationModel,
    dataset: SegmentationDataset,
    *,
    views: int,
    context: RunContext,
    batch: int = 16,
    workers: int = 0,
    dtype: torch.dtype = torch.float32,
    store: torch.device | Path | None = None,
    desc: str = "features",
    chunks: Path | None = None,
    clock: Timings | None = None,
    contents: Contents | None = None,
) -> FeatureCache:
    """Run the backbone over `views` augmented passes of `dataset` and keep the token grids (and what else
    `contents` says; default: what `model`'s head reads).

    With `chunks`, every batch is also saved there as it is made, and batches already saved are read
    back instead of computed: an interrupted extraction continues where it stopped. Under torchrun
    each process extracts every world_size-th image into the same cache: a file all processes map
    (CPU memory or disk), or, on GPUs, a tensor summed across processes (zeros elsewhere): no
    process holds more than one copy. Its parts' time goes into `clock` (stage ``cache``).
    """
    clock = clock or Timings()
    world = distributed.world_size()
    store = store or torch.device("cpu")
    rank, procs = _extractors(world, store)
    mine = list(range(rank, len(dataset), procs))
    if not len(dataset):
        raise ValueError(f"no images to extract features from in {desc}")
    contents = contents or Contents.of(model)
    cache = _allocate(model, dataset, views, dtype, store, world, contents)
    step = max(1, batch // views)  # images a batch: every view of each, about `batch` backbone inputs in all
    with tqdm(total=views * len(mine), unit="img", desc=desc, leave=False, disable=distributed.rank() > 0) as bar:
        todo = []
        for start in range(0, len(mine), step):
            index = mine[start : start + step]
            rows = (torch.arange(views)[:, None] * len(dataset) + torch.tensor(index)[None]).reshape(-1)
            chunk = chunks / f"b{start:06d}_r{rank}of{procs}.pt" if chunks else None
            with clock.part("cache", "reading saved chunks"):
                saved = _read_verified(chunk, {"rows": rows.tolist()}, bar.write) if chunk is not None else None
            if saved is not None:
                _put_rows(cache, rows, saved)
                bar.update(len(rows))
            else:
                todo.append((chunk, index, rows))
        if todo:
            _compute(model, dataset, views, todo, cache, context, workers, bar, desc, clock, contents.layers)
    if world > 1 and cache.features.device.type == "cuda":
        for tensor in (cache.features, cache.masks, cache.images):  # each row was written by one process: exact
            if tensor is not None:
                distributed.all_sum(tensor)
    distributed.barrier()  # every process has written its rows into the shared file
    return cache


def _extractors(world: int, store: torch.device | Path) -> tuple[int, int]:
    """This process's place among the processes that extract a cache together, and their number: a cache in
    memory or files is shared by the processes of each machine; one on a GPU is each process's own, extracted by
    all processes together (rows summed across them)."""
    if _node_shared(world, store):
        return distributed.local_rank(), distributed.local_world_size()
    return distributed.rank(), world


def _allocate(
    model: SegmentationModel,
    dataset: SegmentationDataset,
    views: int,
    dtype: torch.dtype,
    store: torch.device | Path,
    world: int,
    contents: Contents,
) -> FeatureCache:
    """An empty cache for `views` passes over `dataset`: in memory on `store`, in a file in a folder, or under
    torchrun off the GPU in files every process maps (unlinked once all have mapped them)."""
    n, p = len(dataset), model.backbone.patch_size
    h, w = dataset.imgsz
    shapes = [(views * n, contents.layers * model.backbone.embed_dim, h // p, w // p), (views * n, h, w)]
    if contents.images:
        shapes.append((views * n, 3, h, w))
    names: list[str | None] = [None] * len(shapes)
    if _node_shared(world, store):
        sizes = [
            math.prod(s) * (torch.empty(0, dtype=dtype).element_size() if i == 0 else 1) for i, s in enumerate(shapes)
        ]
        store = _node_store(sum(sizes), store)
        names = _node_files(store, len(shapes))
    feats = allocate(shapes[0], dtype, store, names[0])
    masks = allocate(shapes[1], torch.uint8, store, names[1])
    images = allocate(shapes[2], torch.uint8, store, names[2]) if contents.images else None
    distributed.barrier()
    if distributed.local_rank() == 0:
        for name in names:
            if name:
                os.unlink(name)  # every process of this machine has it mapped: nothing is left behind
    return FeatureCache(feats, masks, views, images=images, mean=dataset.mean, std=dataset.std)


def _node_shared(world: int, store: torch.device | Path) -> bool:
    """Whether the processes of each machine share one cache (in memory or files; a GPU cache is per process)."""
    return world > 1 and not (isinstance(store, torch.device) and store.type == "cuda")


def _put_rows(cache: FeatureCache, rows: torch.Tensor, part: dict) -> None:
    """Write one batch's features, masks (and images) into the cache's `rows`."""
    cache.features[rows.to(cache.features.device)] = part["features"].to(cache.features.device, cache.features.dtype)
    cache.masks[rows.to(cache.masks.device)] = part["masks"].to(cache.masks.device)
    if cache.images is not None:
        cache.images[rows.to(cache.images.device)] = part["images"].to(cache.images.device)


PROTECT_S = 60.0  # an extraction projected to take longer is saved as it goes (chunks); a shorter one is not


def _compute(
    model: SegmentationModel,
    dataset: SegmentationDataset,
    views: int,
    todo: list,
    cache: FeatureCache,
    context: RunContext,
    workers: int,
    bar: tqdm,
    desc: str,
    clock: Timings,
    layers: int,
) -> None:
    """Run the backbone over every view of the (chunk file, image indices, rows) batches in `todo`, each image
    decoded once for all its views; each batch goes into the cache and, where it has a chunk file and the whole
    extraction is long enough to be worth protecting (`PROTECT_S`, decided from the first batch and said), to
    disk as well, so an interrupted extraction continues there. On a CPU the images of a batch go through one at
    a time (as fast there), so the progress moves per image; once the first are measured, the time is said."""
    loader = torch.utils.data.DataLoader(  # one loader over images; an item is all its views
        AllViews(dataset, views),
        batch_sampler=[index for _, index, _ in todo],
        num_workers=workers,
        pin_memory=context.device.type == "cuda",
    )
    device = context.device
    faster = faster_options(dataset.imgsz, model.backbone.patch_size, model.backbone.cfg.name, device)
    estimate = Estimate(desc, sum(len(rows) for _, _, rows in todo), "image", device, after=3, faster=faster)
    protect: bool | None = None  # decided from the first batch's pace
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-writer") as writer:  # writes beside compute
        pending: list = []
        batches = clock.timed(loader, "cache", "decoding and augmenting images")
        for (chunk, _, rows), (images, masks) in zip(todo, batches, strict=True):
            part = _compute_batch(
                model,
                _view_major(images),
                _view_major(masks),
                dataset,
                cache,
                context,
                bar,
                estimate,
                clock,
                layers,
            )
            with clock.part("cache", "copying into the cache"):
                _put_rows(cache, rows, part)
            if chunk is None:
                continue
            if protect is None:
                protect = _worth_protecting(estimate, bar.write)
            if protect:
                part["features"] = part["features"].to("cpu", cache.features.dtype)
                pending.append(writer.submit(_timed_save, clock, chunk, part | {"rows": rows.tolist()}))
            while pending and (pending[0].done() or len(pending) > 2):  # at most 2 waiting: memory stays bounded
                pending.pop(0).result()  # a failed write stops the extraction with its error
        for future in pending:
            future.result()


def _timed_save(clock: Timings, path: Path, part: dict) -> None:
    """`save_verified` in the writer thread, its busy time counted."""
    with clock.part("cache", "saving chunks (writer thread)"):
        save_verified(path, part)


def _view_major(batch: torch.Tensor) -> torch.Tensor:
    """(B, V, ...) items of `AllViews` as (V * B, ...): view 0 of every image, then view 1, as the cache's rows."""
    return batch.transpose(0, 1).reshape(-1, *batch.shape[2:])


def _worth_protecting(estimate: Estimate, say) -> bool:
    """Whether an extraction is long enough (`PROTECT_S`, projected from what `estimate` measured so far) to be
    saved as it goes; when not, it says so in one line."""
    seconds = estimate.projection()
    if seconds >= PROTECT_S:
        return True
    say(
        f"{estimate.what}: about {duration(seconds)} here, so not saved as it goes (an interrupted run computes "
        "them again)"
    )
    return False


def _compute_batch(
    model: SegmentationModel,
    images: torch.Tensor,
    masks: torch.Tensor,
    dataset: SegmentationDataset,
    cache: FeatureCache,
    context: RunContext,
    bar: tqdm,
    estimate: Estimate,
    clock: Timings,
    layers: int,
) -> dict:
    """One batch's features from uint8 `images` normalised on the device, its uint8 masks (and, for heads that
    read them, the uint8 images); on a CPU one image at a time."""
    grids = []
    device = context.device
    for chunk in images.split(1 if device.type == "cpu" else len(images)):
        with clock.part("cache", "backbone", device), context.autocast():
            pixels = normalize_batch(chunk.to(device, non_blocking=True), dataset.mean, dataset.std)
            grids.append(model.features(pixels, layers=layers))
        bar.update(len(chunk))
        for line in estimate.update(len(chunk)) if not bar.disable else []:
            bar.write(line)
    part = {"features": torch.cat(grids), "masks": masks}
    if cache.images is not None:  # the augmented image, as the uint8 it is before normalising
        part["images"] = images
    return part


def chunk_count(chunks: Path | None) -> int:
    """Images whose features are saved as chunks in `chunks` (all views)."""
    if chunks is None or not chunks.is_dir():
        return 0
    return sum(
        len(torch.load(c, map_location="cpu", weights_only=True, mmap=True)["masks"]) for c in chunks.glob("b*.pt")
    )


def load_or_extract(cache_dir: Path | None, key: str, **kwargs: object) -> FeatureCache:
    """Reuse a cache saved on disk under `key` once it is verified (else it is said and extracted again), or
    extract it (and save it when `cache_dir` is set)."""
    path = cache_dir / f"{key}.pt" if cache_dir else None
    dataset = kwargs["dataset"]
    norm = {"mean": dataset.mean, "std": dataset.std}
    views = kwargs["views"]
    expected = {"key": key, "views": views, "count": views * len(dataset)}
    data = _read_verified(path, expected, lambda line: print(line, file=sys.stderr)) if path is not None else None
    if data is not None:
        store = kwargs.get("store") or torch.device("cpu")
        dtype = kwargs.get("dtype", torch.float32)
        images = data.get("images")
        if not isinstance(store, torch.device):  # a disk cache: kept as read
            return FeatureCache(data["features"], data["masks"], data["views"], images=images, **norm)
        images = images.to(store) if images is not None else None
        return FeatureCache(
            data["features"].to(store, dtype), data["masks"].to(store), data["views"], images=images, **norm
        )
    cache = extract(**kwargs)
    if path is not None and distributed.rank() == 0:
        payload = {"features": cache.features.cpu(), "masks": cache.masks.cpu(), **expected}
        if cache.images is not None:
            payload["images"] = cache.images.cpu()
        save_verified(path, payload)
    return cache


TENSORS = ("features", "masks", "images")


def checksum(part: dict) -> str:
    """sha256 over the tensors of a saved cache part, in a fixed order."""
    digest = hashlib.sha256()
    for name in TENSORS:
        if part.get(name) is not None:
            tensor = part[name].detach().cpu().contiguous()
            digest.update(name.encode() + str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # read in place, not copied
    return digest.hexdigest()


def save_verified(path: Path, part: dict) -> None:
    """Save a cache part (atomically) with its checksum, so a damaged file is found before it is used."""
    payload = part | {"sha256": checksum(part)}
    atomic_write(path, lambda f: torch.save(payload, f))


def _read_verified(path: Path, expected: dict, say) -> dict | None:
    """A saved cache part if it is intact and the one expected (its key, views, rows), else None: a missing
    file silently, a damaged or foreign one said in one line and removed, so it is computed again."""
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # read through, not held
        wrong = [k for k, v in expected.items() if data.get(k) != v]
        if wrong:
            problem = f"it belongs to another cache ({', '.join(wrong)} differ)"
        elif data.get("sha256") != checksum(data):
            problem = "its checksum does not match: damaged"
        elif data["features"].is_floating_point() and not torch.isfinite(data["features"].float()).all():
            problem = "it holds NaN or infinite values"
        else:
            return data
    except Exception as err:  # truncated, not a torch file, missing fields: all mean "do not use it"
        problem = f"it cannot be read ({type(err).__name__})"
    say(f"feature cache {path}: {problem}; computing those features again")
    path.unlink(missing_ok=True)
    return None
