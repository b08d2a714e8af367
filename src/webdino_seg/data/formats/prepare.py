"""`prepare-data --format`: read a dataset in the format its tool wrote and write the project's layout."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ...utils.metrics import VOID
from ..datasets import DataError
from ..images import read_mask
from ..labels import Coding
from .readers import READERS, Source, reader
from .writer import Example, assign_splits, check_out, write_dataset


def prepare_dataset(
    fmt: str,
    source: str | Path | list[str | Path],
    out: str | Path,
    *,
    valid_fraction: float = 0.15,
    seed: int = 42,
    class_names: list[str] | None = None,
    ignore_index: int = VOID,
    reduce_labels: bool = False,
    images: str | Path | None = None,
    log=print,
) -> dict:
    """Import `source` (a folder, or a COCO JSON / YOLO data.yaml) in format `fmt` into `out`: train/valid
    images and label maps (class ids, 255 ignore) and classes.json. A format's own train/val/test split is kept;
    images without one are split by the stable rule (a share `valid_fraction`, from each image's name and `seed`).
    Into an earlier import's folder it adds: what is there keeps its split. Returns the counts per split."""
    sources = [Path(s) for s in (source if isinstance(source, (list, tuple)) else [source])]
    fmt_reader = reader(fmt)  # an unknown format is refused before anything is looked at
    out = Path(out)
    kept = check_out(out, *sources, *([Path(images)] if images else []), earlier=True)
    for one in sources:
        if not one.exists():
            raise DataError(f"{one}: no such file or folder")
    if len(sources) > 1 and not fmt_reader.several:
        several = ", ".join(name for name, r in sorted(READERS.items()) if r.several)
        raise DataError(f"--format {fmt} takes one --source (several, one per split, are for: {several})")
    given = Source(
        sources if len(sources) > 1 else sources[0],
        class_names,
        Coding(ignore_index, reduce_labels),
        Path(images) if images else None,
        log,
    )
    examples, classes = fmt_reader.read(given)
    if kept:
        examples = _keep_earlier(examples, kept, out, len(classes.names), log)
    assign_splits(examples, valid_fraction, seed)
    record = {"source": " ".join(map(str, sources)), "format": fmt, "seed": seed, "valid_fraction": valid_fraction}
    return write_dataset(out, examples, classes, f"{' '.join(map(str, sources))} ({fmt})", record)


def _keep_earlier(examples: list[Example], kept: dict[str, str], out: Path, num_classes: int, log) -> list[Example]:
    """Importing into an earlier import's folder: every image it holds keeps its split (the source's own split
    does not move it, said in one line) and stays even where the source no longer has it; the rest are new."""
    moved = 0
    for example in examples:
        name = example.name or example.image.name
        if name in kept:
            moved += example.split is not None and example.split != kept[name]
            example.split = kept[name]
    have = {e.name or e.image.name for e in examples}
    carried = [
        Example(
            out / f"{split}_images" / name,
            partial(read_mask, out / f"{split}_masks" / f"{Path(name).stem}.png", "ids", num_classes),
            split,
            name,
        )
        for name, split in sorted(kept.items())
        if name not in have
    ]
    new = len(examples) - (len(kept) - len(carried))
    log(
        f"adding to the earlier import in {out}: {len(kept)} image(s) keep their split, {new} new"
        + (f", {len(carried)} no longer in the source kept as they were" if carried else "")
        + (f"; {moved} stay where they were although the source now puts them in another split" if moved else "")
    )
    return examples + carried
