"""The formats `prepare-data` reads, each registered by its own module with `register`; `reader(name)` finds
one. Every module of this package is imported on the first look-up, so a new format is one module here (and its
name in `data/names.py`, which the CLI's choices read without importing any reader)."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..datasets import DataError
from ..labels import Classes, Coding
from ..names import FORMATS
from .writer import Example

ELSEWHERE = ("pennfudan",)  # in FORMATS, read by data/pennfudan.py (the release's own layout, downloads)


@dataclass(frozen=True)
class Source:
    """What a reader is given: the source (one path, or several where the format takes them), the class names
    given on the command line, how label values are read, a folder of images named by the labels, and where to
    say things."""

    path: Path | list[Path]
    class_names: list[str] | None
    coding: Coding
    images: Path | None
    log: Callable[[str], None]


@dataclass(frozen=True)
class Reader:
    """One format: its name (`--format`), the function that reads a `Source` into examples and classes, and
    whether it takes several sources (one per split)."""

    name: str
    read: Callable[[Source], tuple[list[Example], Classes]]
    several: bool = False


READERS: dict[str, Reader] = {}


def register(name: str, *, several: bool = False) -> Callable:
    """Decorator: the function reads format `name` (see `Reader`)."""

    def add(read: Callable[[Source], tuple[list[Example], Classes]]) -> Callable:
        if name in READERS:
            raise ValueError(f"dataset format {name!r} is registered twice")
        READERS[name] = Reader(name, read, several)
        return read

    return add


def reader(name: str) -> Reader:
    """The reader of format `name`; an unknown name is an error naming the known ones."""
    _load_all()
    if name not in READERS:
        raise DataError(f"--format {name!r}: use one of {', '.join(FORMATS)}")
    return READERS[name]


@functools.cache
def _load_all() -> None:
    """Import every module of this package (each registers its formats), then check them against `FORMATS`."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")
    check_names(set(READERS), FORMATS)


def check_names(registered: set[str], names: tuple[str, ...]) -> None:
    """The registered formats are the CLI's choices (less those read elsewhere), no more and no fewer."""
    expected = set(names) - set(ELSEWHERE)
    if registered != expected:
        missing, extra = sorted(expected - registered), sorted(registered - expected)
        raise RuntimeError(
            f"dataset formats: {missing or 'none'} named in data/names.py FORMATS without a reader, "
            f"{extra or 'none'} registered without a name there"
        )
