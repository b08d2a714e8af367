"""The `webdino-seg` argument parser: one small function per subcommand, sharing the flag groups several
commands take. Parsing only: `cli.py` runs what was parsed."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys

from .._version import __version__
from ..data.names import FORMATS, MASK_MODES
from ..engine.config import TrainConfig
from ..engine.names import LOSSES
from ..inference.masks import MASK_VALUES
from ..inference.names import ENGINES, EVAL_SPLITS, EXPORT_FORMATS, PRECISIONS
from ..inference.settings import default as _infer
from ..models.names import HEAD_NAMES

DESCRIPTION = """Semantic segmentation on frozen Web-DINO, DINOv2 and DINOv3 backbones.

Typical use: `prepare-data` (or bring image/mask folders), `train` a head on a frozen backbone,
then `evaluate`, `predict` images and segment a `video` with the trained model.
Every command takes --help; --debug (anywhere) shows full tracebacks."""


def seed(text: str) -> int:
    """argparse type: a seed torch can take (0 to 2**63 - 1)."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be from 0 to {2**63 - 1}, got {value}")
    return value


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _imgsz(parser: argparse.ArgumentParser, default: tuple[int, int] | None = (644, 644), **kw: object) -> None:
    parser.add_argument(
        "--imgsz",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=default,
        help="model input height and width, multiples of the patch size (14; 16 for DINOv3)"
        + ("" if default else "; default: the size the model was trained at"),
        **kw,
    )


def _mask_mode(parser: argparse.ArgumentParser, **kw: object) -> None:
    parser.add_argument(
        "--mask-mode",
        default="auto",
        choices=MASK_MODES,
        help="how to read mask values: auto (0/255 masks with 2 classes are binary, else class ids), ids "
        "(class ids, 255 void), binary (0 background, anything else class 1) or instances (instance ids of class 1)",
        **kw,
    )


def _tile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile",
        action="store_true",
        help="segment images larger than the model's input in "
        "overlapping windows of that size at full resolution, probabilities averaged (sliding "
        "window: slower, keeps small detail of big photos)",
    )


def _model_args(parser: argparse.ArgumentParser) -> None:
    """The options every command that loads a trained checkpoint takes."""
    parser.add_argument(
        "--model", required=True, help="a model checkpoint written by train (e.g. RUN/best_model_iou.pth)"
    )
    _imgsz(parser, None)
    parser.add_argument("--device", default=_infer("device"), help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--weights", help="where the backbone weights are, if not where training found them")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: horizontal flip and sizes "
        "0.75/1/1.25 of --imgsz, probabilities averaged (6x slower)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=_infer("precision"),
        help="on the CPU: fp32, bf16 (where "
        "the CPU has native bf16), int8 (int8 Linears: 3.1x float32 by OpenVINO, 2.6x by PyTorch at "
        "448x448 on 2 AVX-512 cores) or auto (int8); a GPU runs bf16 where native",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=_infer("engine"),
        help="what runs bf16 and int8 on the "
        "CPU: openvino (the openvino extra), torch, or auto (OpenVINO where installed)",
    )
    parser.add_argument(
        "--threads",
        type=positive,
        help="CPU threads for the model (video decoding and encoding get a "
        "quarter of them each, at least 1); default: the cores this process may use",
    )


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows each flag's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


class _Given(argparse.Action):
    """Stores a value and records that the flag was given (``--resume`` checks what changed)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = (getattr(namespace, "given", None) or set()) | {self.dest}


class _GivenTrue(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        namespace.given = (getattr(namespace, "given", None) or set()) | {self.dest, self.dest.removeprefix("no_")}


# one example per command, as its --help ends; from the repository root on the bundled sample (the ones that use
# a model use the one the train example writes; tests run them in that order)
EXAMPLES = {
    "info": "webdino-seg info --arch webdino-300m",
    "convert-weights": "webdino-seg convert-weights --input webssl_dino300m_full2b_224.pth --output webdino300m-hf "
    "--to hf",
    "prepare-data": "webdino-seg prepare-data --format folders --source examples/pennfudan-sample --out data/sample",
    "download-data": "webdino-seg download-data --out downloads",
    "show-data": "webdino-seg show-data examples/pennfudan-sample --out samples.png",
    "train": "webdino-seg train --data examples/pennfudan-sample --arch webdino-tiny --weights random --imgsz 112 112 "
    "--epochs 2 --out runs/tiny",
    "sweep": "webdino-seg sweep --data examples/pennfudan-sample --arch webdino-tiny --weights random --imgsz 112 112 "
    "--epochs 2 --heads simple,linear4 --out runs/sweep",
    "evaluate": "webdino-seg evaluate --data examples/pennfudan-sample --model runs/tiny/best_model_iou.pth "
    "--report runs/tiny/report",
    "predict": "webdino-seg predict --input examples/pennfudan-sample/valid_images "
    "--model runs/tiny/best_model_iou.pth --out runs/tiny/predict",
    "video": "webdino-seg video --input examples/people_walking_clip.mp4 --model runs/tiny/best_model_iou.pth "
    "--out runs/tiny/clip.mp4",
    "demo": "webdino-seg demo --model runs/tiny/best_model_iou.pth",
    "export": "webdino-seg export --model runs/tiny/best_model_iou.pth --out runs/tiny/model.onnx",
    "benchmark": "webdino-seg benchmark --arch webdino-tiny --imgsz 56 56 --device cpu --quick",
}


# the documentation page of each command (docs/ in the repository, or the site `make docs` builds)
DOCS = {
    "info": "backbones.md",
    "convert-weights": "backbones.md",
    "prepare-data": "data.md",
    "download-data": "getting-started.md",
    "show-data": "data.md",
    "train": "training.md",
    "sweep": "training.md#which-head-for-my-data",
    "evaluate": "inference.md",
    "predict": "inference.md",
    "video": "inference.md",
    "demo": "inference.md",
    "export": "export.md",
    "benchmark": "benchmarks.md",
}
CACHE_VIEWS = "augmented views per training image in the cache (never more than --epochs)"
CACHE_MEMORY = (
    "largest feature cache kept in memory; a larger one is memory-mapped on disk (default: half the free GPU or CPU "
    "memory)"
)


def _subparser(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        formatter_class=_Help,
        epilog=f"example:\n  {EXAMPLES[name]}\n\ndocs: docs/{DOCS[name]}",
    )
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    return p


def _info(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "info", "print a model's layer table and parameter counts (nothing is downloaded)")
    p.add_argument("--arch", default=_default("arch"), help="backbone variant")
    _imgsz(p)
    p.add_argument("--num-classes", type=positive, default=2, help="classes the head predicts")
    p.add_argument("--fine-tune", action="store_true", help="count the backbone as trainable")
    p.add_argument("--list", action="store_true", help="list the backbone variants and stop")


def _convert_weights(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "convert-weights", "convert backbone weights between the official .pth and Hugging Face")
    p.add_argument("input", help="official .pth, HF folder or .safetensors, URL or Hub id")
    p.add_argument("output", help="a .pth file (--to official) or a folder (--to hf)")
    p.add_argument("--to", choices=["hf", "official"], required=True, help="the format to write")
    p.add_argument("--arch", help="the variant, when it cannot be told from the file")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output webdino-seg did not write (its own earlier outputs are replaced anyway)",
    )


def _prepare_data(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "prepare-data",
        "import a dataset (Penn-Fudan, or what a labelling tool exported) into train/valid folders and classes.json",
    )
    p.add_argument(
        "--source",
        required=True,
        nargs="+",
        help="the dataset: a folder, a zip (pennfudan), a COCO .json (several, or a "
        "folder of them, named by split; or Roboflow's train/ valid/ test/) or a YOLO data.yaml",
    )
    p.add_argument(
        "--out",
        required=True,
        help="new folder for train_images/ train_masks/ valid_images/ valid_masks/ "
        "(and test_*/ where the source has a test split), or an earlier import to add to",
    )
    p.add_argument(
        "--format",
        default="pennfudan",
        choices=FORMATS,
        help="pennfudan (the release), folders "
        "(images + label maps per split, e.g. CamVid), voc, coco, yolo (YOLO-seg), labelme",
    )
    p.add_argument("--valid-count", type=positive, default=24, help="pennfudan: images held out for validation")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=0.15,
        help="other formats: the seeded share of images without a split of their own held out for validation",
    )
    p.add_argument("--seed", type=seed, default=_default("seed"), help="seed of the train/valid shuffle")
    p.add_argument("--class-names", nargs="+", help="folders, labelme: one name per class, background first")
    p.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        help="folders: the stored value that means ignore (CamVid: 11); written as 255",
    )
    p.add_argument("--reduce-labels", action="store_true", help="folders: ADE20K's labels (0 ignore, class k as k+1)")
    p.add_argument("--images", help="coco: the folder of the images (default: beside the JSON, or images/ there)")


def _download_data(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "download-data", "download the official Penn-Fudan zip (needs internet)")
    p.add_argument("--out", default="data", help="folder for PennFudanPed.zip")
    p.add_argument("--url", help="another mirror of the zip (default: the official address)")
    p.add_argument("--sha256", help="expected checksum of the zip (checked when given)")


def _show_data(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "show-data", "write a grid PNG of samples with their masks, captioned")
    p.add_argument("data_pos", nargs="?", metavar="DATA", help=argparse.SUPPRESS)
    p.add_argument("--data", help="dataset folder (train_images/ ... or images/ + masks/)")
    p.add_argument("--out", default="data_samples.png", help="the PNG to write")
    p.add_argument("--split", default="train", choices=["train", "valid"], help="which split to show")
    p.add_argument("--count", type=positive, default=8, help="samples to show")
    p.add_argument(
        "--num-classes",
        type=positive,
        help="classes in the masks, for --mask-mode auto (default: from the data's classes.json, else 2)",
    )
    _mask_mode(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output webdino-seg did not write (its own earlier outputs are replaced anyway)",
    )


def _default(name: str) -> object:
    """`TrainConfig`'s default for setting `name`: the library owns it, the parser shows it."""
    f = TrainConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _train(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "train", "train a segmentation head (or fine-tune) on an image/mask dataset")
    g = {"action": _Given}
    p.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="settings from a YAML file with the keys of a run folder's "
        "config.yaml (e.g. examples/pennfudan-webdino300m.yaml); flags given here override it",
    )
    _data_and_backbone(p, g, _default("out"))
    p.add_argument("--fine-tune", action=_GivenTrue, help="train the backbone too")
    _labels(p, g)
    _train_recipe(p, g)
    _train_cache(p, g)
    p.set_defaults(given=set())


def _data_and_backbone(p: argparse.ArgumentParser, g: dict, out: str) -> None:
    """train's and sweep's flags for the data, the output folder and the backbone."""
    p.add_argument(
        "--data",
        help="folder with train_images/ train_masks/ valid_images/ valid_masks/, or images/ + "
        "masks/ with --valid-fraction",
        **g,
    )
    p.add_argument(
        "--valid-fraction",
        type=float,
        help="for images/ + masks/: the share held out for validation "
        "(e.g. 0.15), each image's side from its name and --seed alone, recorded in split.json",
        **g,
    )
    p.add_argument("--out", default=out, help="output folder (a new -2, -3... is made if it is not empty)", **g)
    p.add_argument("--arch", default=_default("arch"), help="backbone variant (see `webdino-seg info --list`)", **g)
    p.add_argument(
        "--weights",
        help="official .pth, HF folder, Hub id, https:// URL, or 'random' (default: the variant's official .pth URL)",
        **g,
    )


def _listed(kind: type) -> object:
    """An argparse type: comma-separated values of `kind` (``1e-4,3e-4``)."""

    def parse(text: str) -> list:
        return [kind(v) for v in text.split(",")]

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def _sweep(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "sweep",
        "train several heads (learning rates, losses, batch sizes) on one feature cache and rank them",
        "Train every combination of the candidates given on features extracted once, each into its own run folder\n"
        "under --out, then rank them: valid mIoU with paired bootstrap intervals, the all-background baseline,\n"
        "and whether the winner is ahead beyond noise (leaderboard.csv/.json/.png/.html).",
    )
    g = {"action": _Given}
    p.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="train's settings (the keys of a run folder's config.yaml) and a 'sweep:' mapping of setting to "
        "values, e.g. sweep: {head: [simple, linear4], lr: [1e-4, 3e-4]}; flags given here override it",
    )
    _data_and_backbone(p, g, "runs/sweep")
    _labels(p, g)
    p.add_argument(
        "--heads",
        dest="head",
        type=_listed(str),
        default=list(HEAD_NAMES),
        help=f"heads to compare, comma-separated (of {', '.join(HEAD_NAMES)})",
        **g,
    )
    p.add_argument("--lr", type=_listed(float), default=[_default("lr")], help="learning rates, comma-separated", **g)
    p.add_argument("--loss", type=_listed(str), default=[_default("loss")], help="losses, comma-separated", **g)
    p.add_argument(
        "--batch", type=_listed(positive), default=[_default("batch")], help="batch sizes, comma-separated", **g
    )
    _imgsz(p, _default("imgsz"), **g)
    _schedule(p, g)
    _cache(p, g, "keep the shared feature cache here (default: in the sweep folder)")
    p.add_argument(
        "--resume",
        metavar="SWEEP",
        help="continue the sweep folder SWEEP: finished candidates are kept, the kept features read",
    )
    p.set_defaults(given=set(), fine_tune=False, no_cache=False, tensorboard=False)


def _train_recipe(p: argparse.ArgumentParser, g: dict) -> None:
    """train's flags for the head, the loss and the schedule."""
    p.add_argument(
        "--head",
        default=_default("head"),
        choices=list(HEAD_NAMES),
        help="decoder head: simple (the tutorial's), linear4 (DINOv2's linear probe on 4 layers), "
        "multilayer (DPT-like fusion of 4 layers), guided (image-guided upsampling of the logits)",
        **g,
    )
    p.add_argument(
        "--loss",
        default=_default("loss"),
        choices=list(LOSSES),
        help="cross-entropy, or cross-entropy plus Dice on the foreground",
        **g,
    )
    _imgsz(p, _default("imgsz"), **g)
    p.add_argument("--lr", type=float, default=_default("lr"), help="AdamW learning rate", **g)
    p.add_argument("--batch", type=positive, default=_default("batch"), help="images per training step", **g)
    _schedule(p, g)


def _schedule(p: argparse.ArgumentParser, g: dict) -> None:
    """train's and sweep's flags for the epochs, the lr schedule, the device and the seed."""
    p.add_argument("--epochs", type=positive, default=_default("epochs"), help="passes over the training split", **g)
    p.add_argument("--scheduler", action=_GivenTrue, help="multiply the lr by 0.1 at --scheduler-epochs")
    p.add_argument(
        "--scheduler-epochs",
        type=positive,
        nargs="+",
        default=_default("scheduler_epochs"),
        help="epochs where the lr drops",
        **g,
    )
    p.add_argument("--device", default=_default("device"), help="auto (CUDA when available), cpu, cuda or cuda:N", **g)
    p.add_argument(
        "--workers", type=non_negative, help="data-loader processes (default: one per CPU core, at most 8)", **g
    )
    p.add_argument(
        "--seed", type=seed, default=_default("seed"), help="seed of the head's init, augmentation and order", **g
    )


def _cache(p: argparse.ArgumentParser, g: dict, cache_dir: str) -> None:
    """train's and sweep's flags for the feature cache, the precision and bad pairs; `cache_dir`: the help of
    --feature-cache-dir."""
    p.add_argument("--cache-views", type=positive, default=_default("cache_views"), help=CACHE_VIEWS, **g)
    p.add_argument("--feature-cache-dir", help=cache_dir, **g)
    p.add_argument("--cache-memory-gb", type=float, help=CACHE_MEMORY, **g)
    p.add_argument("--no-amp", action=_GivenTrue, help="no bf16 autocast on GPU")
    p.add_argument("--skip-bad", action=_GivenTrue, help="skip unreadable pairs with a warning instead of failing")


def _train_cache(p: argparse.ArgumentParser, g: dict) -> None:
    """train's flags for the feature cache, precision, logging and resuming."""
    p.add_argument("--no-cache", action=_GivenTrue, help="recompute frozen features every epoch (tutorial way)")
    _cache(p, g, "also keep the feature cache on disk here, reused when unchanged")
    p.add_argument(
        "--tensorboard",
        action=_GivenTrue,
        help="also write TensorBoard event files (scores, per-class "
        "IoU, lr, a few valid predictions per epoch) into the run folder: tensorboard --logdir runs",
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run folder RUN after its last completed epoch (--epochs, --device, --workers may change)",
    )


def _labels(p: argparse.ArgumentParser, g: dict) -> None:
    """train's flags for the classes and how the masks store them, and where the run starts from."""
    p.add_argument(
        "--num-classes",
        type=positive,
        help="classes, background included (default: as many as --class-names or the data's classes.json name, else 2)",
        **g,
    )
    p.add_argument(
        "--class-names",
        nargs="+",
        help="one name per class (default: from the data's classes.json, else background person for 2)",
        **g,
    )
    _mask_mode(p, **g)
    p.add_argument(
        "--ignore-index",
        type=int,
        default=_default("ignore_index"),
        help="the mask value that means 'not scored, not learned' (CamVid: 11)",
        **g,
    )
    p.add_argument(
        "--reduce-labels", action=_GivenTrue, help="ADE20K's labels: 0 is ignore and class k is stored as k+1"
    )
    p.add_argument(
        "--class-weights",
        default=_default("class_weights"),
        help="per-class cross-entropy weights: "
        "none, median-freq (SegNet's balancing, from the training masks) or w0,w1,... one per class",
        **g,
    )
    p.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start from a trained model's head (and fine-tuned backbone): same backbone, classes and head",
        **g,
    )


def _evaluate(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "evaluate", "mIoU, per-class IoU and pixel accuracy of a model on a split, full resolution")
    p.add_argument("--data", required=True, help="dataset folder (its --split) or a flat images/ + masks/ folder")
    _model_args(p)
    p.add_argument(
        "--split",
        default=_infer("split"),
        choices=list(EVAL_SPLITS),
        help="which split of --data to score (all: every split)",
    )
    _mask_mode(p)
    p.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="the mask value that means 'ignore' (default: as the model's run read masks)",
    )
    p.add_argument(
        "--reduce-labels",
        action="store_true",
        default=None,
        help="masks store class k as k+1, 0 is ignore (ADE20K; default: as the model's run read masks)",
    )
    p.add_argument("--out", default=None, help="JSON report path (default: <model>.eval.json)")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="also write an HTML report to DIR: scores, confusion matrix, "
        "curves, every image with ground truth and prediction, worst first",
    )
    _tile(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output webdino-seg did not write (its own earlier outputs are replaced anyway)",
    )


def _predict(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "predict", "segment images: overlays and class-id masks")
    p.add_argument("--input", required=True, help="an image, a folder or a glob")
    _model_args(p)
    p.add_argument("--out", default="outputs/predict", help="folder for <name>_overlay.png and <name>_mask.png")
    p.add_argument(
        "--mask-values",
        choices=MASK_VALUES,
        default=_infer("mask_values"),
        help="what <name>_mask.png holds: ids (class "
        "ids 0, 1, ...), 255 (two classes: 0 and 255, viewable), color (each class in its colour, RGB)",
    )
    p.add_argument(
        "--save-probs",
        action="store_true",
        help="also write <name>_probs.npz: per-class probabilities "
        "as uint8 (probs/255), shape (classes, H, W), with the class names",
    )
    _tile(p)
    p.add_argument("--batch", type=positive, default=_infer("batch"), help="images per forward pass")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a message")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output webdino-seg did not write (its own earlier outputs are replaced anyway)",
    )


def _video(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "video", "segment a video file or camera into an overlay MP4 (H.264)")
    p.add_argument(
        "--input", required=True, help="a video file, or a camera index such as 0 (camera:0 if a file is named 0)"
    )
    _model_args(p)
    p.add_argument("--out", help="output .mp4 (default: outputs/<input>_seg.mp4)")
    p.add_argument("--batch", type=positive, default=_infer("batch"), help="frames per forward pass")
    p.add_argument("--max-frames", type=positive, help="stop after this many frames (default: all)")
    p.add_argument("--show", action="store_true", help="also show the frames in a window when a display exists")
    p.add_argument("--no-fps-label", action="store_true", help="leave out the frame-rate label in the top-left corner")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output webdino-seg did not write (its own earlier outputs are replaced anyway)",
    )


def _demo(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "demo", "a local web page to upload an image or a short video and see the segmentation")
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to your network)")
    p.add_argument("--port", type=positive, default=7860, help="port to listen on")
    p.add_argument("--max-mb", type=float, default=20, help="largest upload accepted, in MB")


def _export(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub, "export", "export a trained model to ONNX or OpenVINO (normalisation, backbone, head, upsampling)"
    )
    p.add_argument("--model", required=True, help="a model checkpoint written by train")
    p.add_argument(
        "--format",
        choices=list(EXPORT_FORMATS),
        help="onnx (an .onnx graph for onnxruntime) or openvino (model.xml + model.bin for OpenVINO); "
        "default: what --out's suffix says, else onnx",
    )
    p.add_argument("--out", required=True, help="the file to write: model.onnx, or model.xml (its .bin beside it)")
    _imgsz(p, None)
    p.add_argument("--dynamic", action="store_true", help="any batch size (the image size stays --imgsz)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="int8 MatMuls (onnxruntime's dynamic quantization: "
        "2.6x float32 for Web-DINO 300M at 448x448 on 2 AVX-512 cores)",
    )
    p.add_argument("--weights", help="where the backbone weights are, if not where training found them")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output webdino-seg did not write (its own earlier outputs are replaced anyway)",
    )


def _benchmark(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "benchmark", "time the tutorial's recipe against ours on one device")
    p.add_argument(
        "--arch", default=_default("arch"), help="backbone variant (random weights: speed does not depend on them)"
    )
    _imgsz(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="fewer iterations (and smaller batches on a CPU)")
    p.add_argument("--video", help="a video file for the end-to-end video figures")
    p.add_argument("--data", help="a prepared dataset (e.g. data/pennfudan): adds whole training runs, end to end")
    p.add_argument("--epochs", type=positive, default=60, help="our training run's epochs (the full schedule)")
    p.add_argument(
        "--tutorial-epochs",
        type=positive,
        default=2,
        help="real epochs the tutorial's recipe runs before it is extrapolated to --epochs",
    )
    p.add_argument("--repeats", type=positive, default=3, help="repetitions of every figure (median, min-max)")
    p.add_argument("--cache-views", type=positive, default=4, help="augmented views the cached recipe extracts")
    p.add_argument("--out", help="also write the figures as JSON here")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output webdino-seg did not write (its own earlier outputs are replaced anyway)",
    )


SUBCOMMANDS = (
    _info,
    _convert_weights,
    _prepare_data,
    _download_data,
    _show_data,
    _train,
    _sweep,
    _evaluate,
    _predict,
    _video,
    _demo,
    _export,
    _benchmark,
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors for a mistyped command or flag name the nearest ones."""

    def parse_known_args(self, args=None, namespace=None):
        self.given_args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        super().error(message + _suggestion(self, message))


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """'; did you mean ...?' for an unknown command, or a flag the command given does not have, in `message`."""
    wrong = re.search(r"invalid choice: '([^']*)'", message) or re.search(r"unrecognized arguments: (\S+)", message)
    if wrong is None:
        return ""
    known = [o for a in parser._actions for o in a.option_strings]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = next((a for a in getattr(parser, "given_args", []) if a in action.choices), None)
            if chosen is None:
                known += list(action.choices)
            else:  # the flags of the command given
                known = [o for a in action.choices[chosen]._actions for o in a.option_strings]
    near = difflib.get_close_matches(wrong.group(1), sorted(set(known)), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(near)}?" if near else ""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand (the chosen one lands in ``args.command``)."""
    parser = _Parser(prog="webdino-seg", description=DESCRIPTION, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"webdino-seg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser
