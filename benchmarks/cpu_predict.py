"""`webdino-seg predict` end to end on a folder of Penn-Fudan images in every CPU precision and engine: seconds,
images/s, the masks' agreement with float32 and the valid mIoU, from one model.

The model: Web-DINO 300M with random weights (LayerScale set to 1, as trained models have it near: with the random
1e-5 every block is nearly the identity and any precision looks exact), stored in the checkpoint, and the
tutorial's head fitted on float32 features of --fit training images (Adam, no augmentation). No real weights can be
downloaded here, so the mIoU is a random backbone's; what matters is how much each precision moves it.

    python benchmarks/cpu_predict.py --data /tmp/pf [--imgsz 448] [--fit 24] [--steps 150]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from measured_json import write_measured

from webdino_seg.data.images import read_image, read_mask
from webdino_seg.models.builder import create_backbone
from webdino_seg.models.checkpoint import backbone_identity, save_model
from webdino_seg.models.heads import create_head
from webdino_seg.models.segmentation import SegmentationModel, model_input
from webdino_seg.utils.metrics import ConfusionMatrix

RUNS = [("fp32", "torch"), ("int8", "openvino"), ("bf16", "openvino"), ("int8", "torch"), ("bf16", "torch")]


def fitted_model(data: Path, imgsz: tuple[int, int], fit: int, steps: int) -> SegmentationModel:
    """Web-DINO 300M (random, LayerScale 1) with the simple head fitted on `fit` training images."""
    torch.manual_seed(0)
    backbone = create_backbone("webdino-300m", weights="random", layerscale_init=1.0).eval()
    model = SegmentationModel(backbone, create_head("simple", backbone.embed_dim, 2), fine_tune=True)
    mean, std = torch.tensor(backbone.cfg.mean).view(1, 3, 1, 1), torch.tensor(backbone.cfg.std).view(1, 3, 1, 1)
    feats, masks = [], []
    for path in sorted((data / "train_images").iterdir())[:fit]:
        image = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None]
        with torch.inference_mode():
            feats.append(model.features(model_input(image, imgsz, mean, std)).clone())
        mask = torch.from_numpy(read_mask(data / "train_masks" / f"{path.stem}.png").astype(np.int64))[None, None]
        masks.append(F.interpolate(mask.float(), size=imgsz, mode="nearest-exact").long()[:, 0])
    x, y = torch.cat(feats), torch.cat(masks)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-3)
    for _ in range(steps):
        logits = F.interpolate(model.head(x), size=imgsz, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"head fitted on {fit} images, {steps} steps: final loss {loss.item():.3f}", flush=True)
    return model.eval()


def main() -> None:
    """Print one row per precision and engine."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a prepared Penn-Fudan release (webdino-seg prepare-data)")
    parser.add_argument("--imgsz", type=int, nargs=2, default=[448, 448])
    parser.add_argument("--fit", type=int, default=24)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--json", type=Path, help="also write the figures here (tools/tables.py reads them)")
    args = parser.parse_args()
    data, imgsz = Path(args.data), tuple(args.imgsz)
    model = fitted_model(data, imgsz, args.fit, args.steps)
    valid = sorted((data / "valid_images").iterdir())
    truth = [read_mask(data / "valid_masks" / f"{p.stem}.png") for p in valid]
    with tempfile.TemporaryDirectory() as folder:
        ckpt = Path(folder) / "model.pth"
        meta = {
            "imgsz": list(imgsz),
            "class_names": ["background", "person"],
            "mean": list(model.backbone.cfg.mean),
            "std": list(model.backbone.cfg.std),
        }
        save_model(ckpt, model, backbone_identity(model.backbone, None, 0), meta)
        del model
        print(f"{len(valid)} valid images at {imgsz[0]}x{imgsz[1]}, batch 1, this machine's cores")
        print(f"{'precision':>10}{'engine':>10}{'seconds':>9}{'images/s':>10}{'same as fp32':>14}{'valid mIoU':>12}")
        reference, rows = None, []
        for precision, engine in RUNS:
            out = Path(folder) / f"{precision}-{engine}"
            cmd = [
                sys.executable,
                "-m",
                "webdino_seg",
                "predict",
                "--model",
                str(ckpt),
                "--input",
                str(data / "valid_images"),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--precision",
                precision,
            ]
            start = time.perf_counter()
            done = subprocess.run(
                [*cmd, "--engine", engine] if precision != "fp32" else cmd, capture_output=True, text=True
            )
            seconds = time.perf_counter() - start
            if done.returncode:
                print(f"{precision:>10}{engine:>10}  failed: {done.stderr.strip().splitlines()[-1]}")
                rows.append({"precision": precision, "engine": engine, "failed": done.stderr.strip().splitlines()[-1]})
                continue
            masks = [read_mask(out / f"{p.stem}_mask.png") for p in valid]
            reference = reference or masks
            same = sum(int((a == b).sum()) for a, b in zip(masks, reference, strict=True)) / sum(m.size for m in masks)
            cm = ConfusionMatrix(2)
            for mask, true in zip(masks, truth, strict=True):
                cm.update(torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(true.astype(np.int64)))
            miou = cm.miou()
            rate = len(valid) / seconds
            print(f"{precision:>10}{engine:>10}{seconds:>9.1f}{rate:>10.3f}{same:>14.4%}{miou:>12.4f}", flush=True)
            rows.append(
                {"precision": precision, "engine": engine, "seconds": seconds, "images_per_s": rate}
                | {"same_as_fp32": same, "valid_miou": miou}
            )
    write_measured(
        args.json,
        "cpu-predict",
        images=len(valid),
        imgsz=list(imgsz),
        head_fit={"images": args.fit, "steps": args.steps},
        rows=rows,
    )


if __name__ == "__main__":
    main()
