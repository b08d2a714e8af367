"""Cache of frozen-backbone features: each image (and augmented view) goes through the backbone once.

View ``v`` of image ``i`` is the augmentation the live pipeline would draw at epoch ``v``, so a
cache with as many views as epochs trains on exactly the data an uncached run sees; fewer views
repeat them (epoch ``e`` uses view ``e % views``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .data import SegmentationDataset
from .io import atomic_write
from .model import SegmentationModel
from .runtime import autocast


class FeatureCache:
    """Patch-token grids and their masks for ``views`` passes over a dataset."""

    def __init__(self, features: torch.Tensor, masks: torch.Tensor, views: int) -> None:
        self.features, self.masks, self.views = features, masks, views
        self.count = features.shape[0] // views

    def batch(self, view: int, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (float32) and masks (int64) of images `index` in `view`, on `device`."""
        rows = (view % self.views) * self.count + index.to(self.features.device)
        return self.features[rows].to(device, non_blocking=True).float(), self.masks[rows].to(device).long()

    def nbytes(self) -> int:
        """Memory the cache holds."""
        return self.features.numel() * self.features.element_size() + self.masks.numel()


def plan_store(nbytes: int, device: torch.device, limit_gb: float | None = None) -> str:
    """Where a cache of `nbytes` goes: ``cuda`` or ``cpu`` memory when it fits, else ``disk``.

    It fits when it takes at most `limit_gb`, or, without a limit, half of what is free there.
    """
    limit = None if limit_gb is None else limit_gb * 2**30
    if device.type == "cuda":
        free_gpu, _ = torch.cuda.mem_get_info(device)
        if nbytes <= (limit if limit is not None else free_gpu / 2):
            return "cuda"
    free_ram = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return "cpu" if nbytes <= (limit if limit is not None else free_ram / 2) else "disk"


def allocate(shape: tuple[int, ...], dtype: torch.dtype, store: torch.device | Path) -> torch.Tensor:
    """An empty tensor in memory on `store`, or, when `store` is a folder, backed by a file there.

    The file is unlinked at once: the mapping lives as long as the tensor and nothing is left behind.
    """
    if isinstance(store, torch.device):
        return torch.empty(shape, dtype=dtype, device=store)
    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=store, prefix="features-", suffix=".bin")
    os.close(fd)
    try:
        return torch.from_file(name, shared=True, size=math.prod(shape), dtype=dtype).view(shape)
    finally:
        os.unlink(name)


def cache_key(dataset: SegmentationDataset, model: SegmentationModel, views: int, identity: dict) -> str:
    """A hash of everything the features depend on: image and mask bytes, augmentation, backbone, size."""
    digest = hashlib.sha256()
    for image, mask in dataset.pairs:
        digest.update(hashlib.sha256(image.read_bytes()).digest())
        digest.update(hashlib.sha256(mask.read_bytes()).digest())
    recipe = {
        "imgsz": dataset.imgsz,
        "augment": dataset.augment,
        "seed": dataset.seed,
        "views": views,
        "mask_mode": dataset.mask_mode,
        "transform": repr(dataset.transform),
        "mean": dataset.mean,
        "std": dataset.std,
        "backbone": {k: identity.get(k) for k in ("arch", "config", "weights", "sha256", "fingerprint")},
    }
    digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


@torch.inference_mode()
def extract(
    model: SegmentationModel,
    dataset: SegmentationDataset,
    views: int,
    device: torch.device,
    batch: int = 16,
    workers: int = 0,
    dtype: torch.dtype = torch.float32,
    store: torch.device | Path | None = None,
    desc: str = "features",
    chunks: Path | None = None,
    amp: bool = True,
) -> FeatureCache:
    """Run the backbone over `views` augmented passes of `dataset` and keep the token grids.

    With `chunks`, every batch is also saved there as it is made, and batches already saved are read
    back instead of computed: an interrupted extraction continues where it stopped. Under torchrun
    each process extracts every world_size-th image and the shards are gathered, so every process
    ends with the whole cache.
    """
    store = store or torch.device("cpu")
    n = len(dataset)
    rank, world = distributed.rank(), distributed.world_size()
    mine = list(range(rank, n, world))
    if not mine:
        raise ValueError(f"no images to extract features from in {desc}")
    p = model.backbone.patch_size
    h, w = dataset.imgsz
    feats = allocate((views * len(mine), model.backbone.embed_dim, h // p, w // p), dtype, store)
    masks = allocate((views * len(mine), h, w), torch.uint8, store)
    with tqdm(total=views * len(mine), unit="img", desc=desc, leave=False, disable=rank > 0) as bar:
        for view in range(views):
            dataset.set_epoch(view)
            starts = list(range(0, len(mine), batch))
            todo = []
            for start in starts:
                row = view * len(mine) + start
                chunk = chunks / f"v{view}_r{rank}of{world}_{start:06d}.pt" if chunks else None
                if chunk is not None and chunk.exists():
                    saved = torch.load(chunk, map_location="cpu", weights_only=True)
                    feats[row : row + len(saved["masks"])] = saved["features"].to(feats.device, dtype)
                    masks[row : row + len(saved["masks"])] = saved["masks"].to(masks.device)
                    bar.update(len(saved["masks"]))
                else:
                    todo.append(start)
            if not todo:
                continue
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(dataset, mine),
                batch_sampler=[list(range(start, min(start + batch, len(mine)))) for start in todo],
                num_workers=workers,
                pin_memory=device.type == "cuda",
            )
            for start, (images, target) in zip(todo, loader, strict=True):
                with autocast(device, amp):
                    grid = model.features(images.to(device, non_blocking=True))
                row = view * len(mine) + start
                feats[row : row + len(images)] = grid.to(feats.device, dtype)
                masks[row : row + len(images)] = target.to(masks.device, torch.uint8)
                if chunks is not None:
                    part = {
                        "features": feats[row : row + len(images)].cpu(),
                        "masks": masks[row : row + len(images)].cpu(),
                    }
                    atomic_write(
                        chunks / f"v{view}_r{rank}of{world}_{start:06d}.pt", lambda f, part=part: torch.save(part, f)
                    )
                bar.update(len(images))
    return FeatureCache(distributed.gather_rows(feats, n, views), distributed.gather_rows(masks, n, views), views)


def chunk_count(chunks: Path | None) -> int:
    """Images whose features are saved as chunks in `chunks` (all views)."""
    if chunks is None or not chunks.is_dir():
        return 0
    return sum(
        len(torch.load(c, map_location="cpu", weights_only=True, mmap=True)["masks"]) for c in chunks.glob("v*.pt")
    )


def load_or_extract(cache_dir: Path | None, key: str, **kwargs: object) -> FeatureCache:
    """Reuse a cache saved on disk under `key`, else extract it (and save it when `cache_dir` is set)."""
    path = cache_dir / f"{key}.pt" if cache_dir else None
    if path is not None and path.exists():
        store = kwargs.get("store") or torch.device("cpu")
        dtype = kwargs.get("dtype", torch.float32)
        on_disk = not isinstance(store, torch.device)  # then read it memory-mapped, in place
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=on_disk)
        if on_disk:
            return FeatureCache(data["features"], data["masks"], data["views"])
        return FeatureCache(data["features"].to(store, dtype), data["masks"].to(store), data["views"])
    cache = extract(**kwargs)
    if path is not None and distributed.rank() == 0:
        payload = {"features": cache.features.cpu(), "masks": cache.masks.cpu(), "views": cache.views}
        atomic_write(path, lambda f: torch.save(payload, f))
    return cache
