"""Splits that never move an image: each image's side is decided by its own name and the seed alone.

A seeded shuffle of the whole list (what the tutorial does) re-deals every image when one is added: 300 + 5
images put 26 of 46 valid images on the other side. Here an image goes to valid when a hash of (seed, name)
falls below the valid fraction, so images added later are dealt without touching the others, and images a
record already places keep their side. Contents are compared too: the same image under two names in two splits
is refused, naming both files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..utils.download import sha256_file
from .errors import DataError

SPLITS = ("train", "valid", "test")


def bucket(name: str, seed: int) -> float:
    """Where image `name` falls in [0, 1) for `seed`: from the two alone."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_split(
    names: Iterable[str], valid_fraction: float, seed: int, kept: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Each name's split ("train" or "valid"): names in `kept` keep theirs; the others go to valid when their
    `bucket` is below `valid_fraction`. With nothing kept, at least one image lands on each side (the lowest
    bucket in valid, the highest in train) when there are two or more."""
    if not 0 < valid_fraction < 1:
        raise DataError(f"--valid-fraction {valid_fraction} must be between 0 and 1 (e.g. 0.15)")
    kept = dict(kept or {})
    names = sorted(set(names))
    sides = {n: kept.get(n) or ("valid" if bucket(n, seed) < valid_fraction else "train") for n in names}
    fresh = [n for n in names if n not in kept]
    if not kept and len(names) > 1:
        ranked = sorted(fresh, key=lambda n: bucket(n, seed))
        if "valid" not in sides.values():
            sides[ranked[0]] = "valid"
        if "train" not in sides.values():
            sides[ranked[-1]] = "train"
    return sides


def check_disjoint(splits: Mapping[str, Iterable[Path]]) -> dict[str, dict[str, str]]:
    """Refuse the same image (by content) in two splits, naming both files; returns each split's images as
    {file name: sha256}."""
    seen: dict[str, tuple[str, Path]] = {}
    digests: dict[str, dict[str, str]] = {}
    for split, paths in splits.items():
        digests[split] = {}
        for path in paths:
            digest = sha256_file(path)
            digests[split][path.name] = digest
            if digest in seen and seen[digest][0] != split:
                other_split, other = seen[digest]
                raise DataError(
                    f"{other} ({other_split}) and {path} ({split}) are the same image: an image in two "
                    "splits is scored on what it was trained on; remove one of them"
                )
            seen.setdefault(digest, (split, path))
    return digests
