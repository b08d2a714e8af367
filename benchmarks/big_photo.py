"""A big photo segmented whole (shrunk to the model's input) and with --tile (windows at full resolution).

The photo is a mosaic of real Penn-Fudan photos (rows scaled to one height, about 4000x3000 by default) with its
true mask stitched the same way, so both ways are scored against ground truth at full resolution: mIoU, and the
IoU in a band of pixels near true boundaries, where detail is lost first. Each way runs in its own process, so
its time and peak memory (RSS) are its own. Writes a side-by-side crop to --picture.

    python benchmarks/big_photo.py --model RUN/best_model_iou.pth --release ../shared/data/PennFudanPed
        [--size 4000 3000 --size 5760 4356] [--json benchmarks/measured/big-photo-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from measured_json import write_measured
from PIL import Image

from webdino_seg.data.images import read_mask
from webdino_seg.inference.predictor import Predictor, _starts
from webdino_seg.utils.metrics import ConfusionMatrix


def mosaic(release: Path, width: int, height: int, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Photos of the release (sorted) in rows of `row` pixels high, each cut to `width`; and their binary masks."""
    photos = sorted((release / "PNGImages").glob("*.png"))
    image = np.zeros((height, width, 3), np.uint8)
    truth = np.zeros((height, width), np.uint8)
    i, y = 0, 0
    while y < height:
        x = 0
        while x < width:
            path = photos[i % len(photos)]
            i += 1
            photo = np.asarray(Image.open(path).convert("RGB"))
            mask = read_mask(release / "PedMasks" / f"{path.stem}_mask.png", "binary")
            w = round(photo.shape[1] * row / photo.shape[0])
            photo = cv2.resize(photo, (w, row), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (w, row), interpolation=cv2.INTER_NEAREST_EXACT)  # by pixel centre, as the photo
            h, w = min(row, height - y), min(w, width - x)
            image[y : y + h, x : x + w], truth[y : y + h, x : x + w] = photo[:h, :w], mask[:h, :w]
            x += w
        y += row
    return image, truth


def boundary_band(truth: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of a boundary of the true mask."""
    t = torch.from_numpy(truth.astype(np.float32))[None, None]
    grown = F.max_pool2d(t, 2 * radius + 1, 1, radius)
    shrunk = -F.max_pool2d(-t, 2 * radius + 1, 1, radius)
    return (grown != shrunk)[0, 0].numpy()


def run_one(model: str, tile: bool, image_path: Path, out: Path) -> None:
    """Child process: segment the photo one way; save the mask and the seconds."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    predictor = Predictor.from_checkpoint(model, device="cpu", tile=tile)
    image = np.asarray(Image.open(image_path).convert("RGB"))
    predictor.predict(image[:448, :448])  # warm-up, outside the timing
    start = time.perf_counter()
    mask = predictor.predict(image)
    seconds = time.perf_counter() - start
    np.save(out, mask)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def score(pred: np.ndarray, truth: np.ndarray, where: np.ndarray | None = None) -> float:
    """mIoU of `pred` against `truth` (over `where` only, if given)."""
    cm = ConfusionMatrix(2)
    p, t = torch.from_numpy(pred), torch.from_numpy(truth)
    if where is not None:
        keep = torch.from_numpy(where)
        p, t = p[keep], t[keep]
    cm.update(p, t)
    return cm.miou()


def main() -> None:
    """Build each mosaic, run both ways in child processes, print the table (and write it as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--release", default="../shared/data/PennFudanPed", help="the original Penn-Fudan release")
    parser.add_argument(
        "--size", type=int, nargs=2, action="append", metavar=("W", "H"), help="a photo size (repeat for more)"
    )
    parser.add_argument("--row", type=int, default=375, help="height of each row of photos")
    parser.add_argument("--band", type=int, default=4, help="boundary band radius in pixels")
    parser.add_argument("--picture", default="docs/big_photo.jpg", help="where to write the first size's crop")
    parser.add_argument("--json", type=Path, help="also write the figures here (tools/tables.py reads them)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.model, args.child[0] == "tile", Path(args.child[1]), Path(args.child[2]))
        return
    imgsz = Predictor.from_checkpoint(args.model, device="cpu").imgsz
    photos = [one_size(args, tuple(size), imgsz, first=i == 0) for i, size in enumerate(args.size or [(4000, 3000)])]
    if args.json:
        ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
        settings = {k: ckpt["config"][k] for k in ("arch", "weights", "head", "epochs", "seed", "cache_views")}
        write_measured(
            args.json,
            "big-photo",
            model=settings | {"best_epoch": ckpt["epoch"], "valid_miou": ckpt["metrics"]["valid_miou"]},
            model_input=list(imgsz),
            row_px=args.row,
            band_px=args.band,
            photos=photos,
        )


def one_size(args: argparse.Namespace, size: tuple[int, int], imgsz: tuple[int, int], first: bool) -> dict:
    """One mosaic of `size` (W, H) segmented both ways: the printed rows, and their figures."""
    image, truth = mosaic(Path(args.release), *size, args.row)
    work = Path(tempfile.mkdtemp())
    Image.fromarray(image).save(work / "photo.png")
    results = {}
    for way in ("whole", "tile"):
        out = work / f"{way}.npy"
        subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--child", way, str(work / "photo.png"), str(out)],
            check=True,
        )
        results[way] = json.loads(out.with_suffix(".json").read_text()) | {"mask": np.load(out)}
    band = boundary_band(truth, args.band)
    windows = len(_starts(size[1], imgsz[0])) * len(_starts(size[0], imgsz[1]))
    print(
        f"photo {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.1f} MP) of Penn-Fudan photos, model input "
        f"{imgsz[1]}x{imgsz[0]} ({windows} windows with --tile), boundary band: {band.mean():.1%} of pixels within "
        f"{args.band} px"
    )
    print(f"{'way':<8}{'seconds':>9}{'peak RSS MB':>13}{'mIoU':>8}{'band mIoU':>11}")
    ways = []
    for way, r in results.items():
        miou, band_miou = score(r["mask"], truth), score(r["mask"], truth, band)
        print(f"{way:<8}{r['seconds']:>9.2f}{r['peak_rss_mb']:>13.0f}{miou:>8.4f}{band_miou:>11.4f}")
        ways.append({"way": way, "seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"], "miou": miou})
        ways[-1]["band_miou"] = band_miou
    differ = results["whole"]["mask"] != results["tile"]["mask"]
    print(f"the two masks differ on {differ.mean():.2%} of all pixels and {differ[band].mean():.2%} of the band")
    if first:
        _picture(image, truth, results, Path(args.picture))
    return {
        "size": list(size),
        "windows": windows,
        "ways": ways,
        "differ": float(differ.mean()),
        "differ_band": float(differ[band].mean()),
    }


def _picture(image: np.ndarray, truth: np.ndarray, results: dict, path: Path) -> None:
    """An 800x600 crop of the photo three times: truth, whole, tiled side by side (1500 pixels wide)."""
    from webdino_seg.utils.overlay import caption, overlay

    y, x, h, w = 0, 0, 600, 800
    panels = [
        caption(overlay(image[y : y + h, x : x + w], m[y : y + h, x : x + w]), name)
        for name, m in (
            ("ground truth", truth),
            ("whole photo shrunk", results["whole"]["mask"]),
            ("--tile", results["tile"]["mask"]),
        )
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(np.concatenate(panels, 1))
    picture.resize((1500, round(picture.height * 1500 / picture.width)), Image.LANCZOS).save(path, quality=85)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
