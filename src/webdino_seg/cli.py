"""The `webdino-seg` command: argument parsing only; every subcommand calls into the package."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

DESCRIPTION = """Semantic segmentation on frozen Web-DINO and DINOv2 backbones.

Typical use: `prepare-data` (or bring image/mask folders), `train` a head on a frozen backbone,
then `evaluate`, `predict` images and segment a `video` with the trained model.
Every command takes --help; --debug (anywhere) shows full tracebacks."""


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
        help="model input height and width, multiples of the patch size (14)"
        + ("" if default else "; default: the size the model was trained at"),
        **kw,
    )


def _mask_mode(parser: argparse.ArgumentParser, **kw: object) -> None:
    from .imageio import MASK_MODES

    parser.add_argument(
        "--mask-mode",
        default="auto",
        choices=MASK_MODES,
        help="how to read mask values: auto (0/255 masks with 2 classes are binary, else class ids), ids "
        "(class ids, 255 void), binary (0 background, anything else class 1) or instances (instance ids of class 1)",
        **kw,
    )


def _model_args(parser: argparse.ArgumentParser) -> None:
    """The options every command that loads a trained checkpoint takes."""
    parser.add_argument(
        "--model", required=True, help="a model checkpoint written by train (e.g. RUN/best_model_iou.pth)"
    )
    _imgsz(parser, None)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--weights", help="where the backbone weights are, if not where training found them")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: horizontal flip and sizes "
                        "0.75/1/1.25 of --imgsz, probabilities averaged (6x slower)")  # fmt: skip


def cmd_info(args: argparse.Namespace) -> None:
    import torch

    from .backbone import check_image_size
    from .factory import create_model
    from .summary import model_summary
    from .variants import VARIANTS

    if args.list:
        for cfg in VARIANTS.values():
            print(
                f"{cfg.name:<20} dim {cfg.embed_dim:>4}  depth {cfg.depth:>2}  heads {cfg.num_heads:>2}  "
                f"{cfg.ffn:<6}  {cfg.img_size}px  {cfg.hub_id or '-'}"
            )
        return
    check_image_size(*args.imgsz)
    with torch.device("meta"):
        model = create_model(args.arch, num_classes=args.num_classes, fine_tune=args.fine_tune)
    print(model_summary(model, tuple(args.imgsz)))


def cmd_convert_weights(args: argparse.Namespace) -> None:
    from .variants import get_variant
    from .weights import convert_weights

    cfg = get_variant(args.arch) if args.arch else None
    fmt = convert_weights(args.input, args.output, args.to, cfg)
    print(f"converted {args.input} ({fmt}) -> {args.output} ({args.to})")


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from .data import prepare_pennfudan

    info = prepare_pennfudan(args.source, args.out, args.valid_count, args.seed)
    print(f"wrote {info['train']} train and {info['valid']} valid pairs to {info['out']} (split in split.json)")


def cmd_download_data(args: argparse.Namespace) -> None:
    from .data import PENNFUDAN_URL, download_pennfudan

    path = download_pennfudan(args.out, args.url or PENNFUDAN_URL, args.sha256)
    print(f"downloaded {path}; next: webdino-seg prepare-data --source {path} --out data/pennfudan")


def cmd_show_data(args: argparse.Namespace) -> None:
    from .data import show_data

    data = args.data or args.data_pos
    if not data:
        raise ValueError("--data is required: a dataset folder (train_images/ ... or images/ + masks/)")
    print(f"wrote {show_data(data, args.out, args.split, args.count, args.mask_mode, args.num_classes)}")


def cmd_train(args: argparse.Namespace) -> None:
    from . import distributed

    try:
        _train(args)
    finally:
        distributed.teardown()


def _train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k: v for k, v in vars(args).items() if k in names}
    settings |= {"cache": not args.no_cache, "amp": not args.no_amp}
    if args.resume:
        given = {k: v for k, v in settings.items() if k in args.given}
        train(None, resume=args.resume, changes=given)  # type: ignore[arg-type]
        return
    if not args.data:
        raise ValueError(
            "--data is required: a folder with train_images/ train_masks/ valid_images/ valid_masks/ "
            "(masks are PNGs of class ids). Try the bundled sample: --data examples/pennfudan-sample, or make "
            "the full set with `webdino-seg prepare-data --source PennFudanPed --out data/pennfudan`"
        )
    train(TrainConfig(**settings))


def _predictor(args: argparse.Namespace):
    """The Predictor for a command's --model, --device, --imgsz and --weights."""
    from .predictor import Predictor

    predictor = Predictor.from_checkpoint(
        args.model, args.device, tuple(args.imgsz) if args.imgsz else None, args.weights, tta=args.tta
    )
    if predictor.tta:
        print(predictor.describe_tta(), file=sys.stderr)
    return predictor


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate, format_report

    if args.report:
        from .io import check_output_dir

        check_output_dir(args.report, "--report")  # before the model is loaded
    report = evaluate(_predictor(args), args.model, args.data, args.split, args.mask_mode, args.out,
                      report_dir=args.report)  # fmt: skip
    print(format_report(report))
    if args.report:
        print(f"HTML report: {report['html_report']} (open it in a browser; works offline)")


def cmd_predict(args: argparse.Namespace) -> None:
    from .io import check_output_dir
    from .predict import predict_paths

    check_output_dir(args.out)  # before the model is loaded
    info = predict_paths(_predictor(args), args.input, args.out, args.batch, args.skip_bad)
    print(
        f"{info['images']} image(s) -> {args.out} in {info['seconds']:.2f}s ({info['images_per_second']:.1f} images/s)"
    )


def cmd_video(args: argparse.Namespace) -> None:
    from .io import check_output_file
    from .video import is_camera, run_video

    src = args.input
    name = "camera" + src.removeprefix("camera:") if is_camera(src) else Path(src).stem
    out = check_output_file(args.out or Path("outputs") / f"{name}_seg.mp4")  # before the model is loaded
    predictor = _predictor(args)
    info = run_video(predictor, src, out, batch=args.batch, max_frames=args.max_frames, show=args.show)
    for warning in info["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{info['frames']} frames ({info['width']}x{info['height']} at {info['rate']:g} fps) -> {info['output']} "
        f"in {info['seconds']:.2f}s ({info['fps']:.1f} FPS end to end)"
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import serve

    serve(_predictor(args), args.host, args.port, args.max_mb)


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_onnx

    export_onnx(args.model, args.out, tuple(args.imgsz) if args.imgsz else None, args.dynamic, args.weights)


def cmd_benchmark(args: argparse.Namespace) -> None:
    import json

    from .benchmark import benchmark, format_table
    from .io import atomic_write_text

    res = benchmark(
        args.arch,
        tuple(args.imgsz),
        args.device,
        args.quick,
        args.video,
        args.cache_views,
        log=lambda m: print(m, file=sys.stderr),
        data=args.data,
        repeats=args.repeats,
        epochs=args.epochs,
        tutorial_epochs=args.tutorial_epochs,
    )
    print(format_table(res))
    if args.out:
        atomic_write_text(args.out, json.dumps(res, indent=2) + "\n")


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


def _subparser(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                       formatter_class=_Help)  # fmt: skip
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="webdino-seg", description=DESCRIPTION, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"webdino-seg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subparser(sub, "info", "print a model's layer table and parameter counts (nothing is downloaded)")
    p.add_argument("--arch", default="webdino-300m", help="backbone variant")
    _imgsz(p)
    p.add_argument("--num-classes", type=positive, default=2, help="classes the head predicts")
    p.add_argument("--fine-tune", action="store_true", help="count the backbone as trainable")
    p.add_argument("--list", action="store_true", help="list the backbone variants and stop")
    p.set_defaults(func=cmd_info)

    p = _subparser(sub, "convert-weights", "convert backbone weights between the official .pth and Hugging Face")
    p.add_argument("input", help="official .pth, HF folder or .safetensors, URL or Hub id")
    p.add_argument("output", help="a .pth file (--to official) or a folder (--to hf)")
    p.add_argument("--to", choices=["hf", "official"], required=True, help="the format to write")
    p.add_argument("--arch", help="the variant, when it cannot be told from the file")
    p.set_defaults(func=cmd_convert_weights)

    p = _subparser(sub, "prepare-data", "turn the Penn-Fudan release (folder or zip) into train/valid folders")
    p.add_argument("--source", required=True, help="PennFudanPed folder or PennFudanPed.zip")
    p.add_argument("--out", required=True, help="new folder for train_images/ train_masks/ valid_images/ valid_masks/")
    p.add_argument("--valid-count", type=positive, default=24, help="images held out for validation")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/valid shuffle")
    p.set_defaults(func=cmd_prepare_data)

    p = _subparser(sub, "download-data", "download the official Penn-Fudan zip (needs internet)")
    p.add_argument("--out", default="data", help="folder for PennFudanPed.zip")
    p.add_argument("--url", help="another mirror of the zip (default: the official address)")
    p.add_argument("--sha256", help="expected checksum of the zip (checked when given)")
    p.set_defaults(func=cmd_download_data)

    p = _subparser(sub, "show-data", "write a grid PNG of samples with their masks, captioned")
    p.add_argument("data_pos", nargs="?", metavar="DATA", help=argparse.SUPPRESS)
    p.add_argument("--data", help="dataset folder (train_images/ ... or images/ + masks/)")
    p.add_argument("--out", default="data_samples.png", help="the PNG to write")
    p.add_argument("--split", default="train", choices=["train", "valid"], help="which split to show")
    p.add_argument("--count", type=positive, default=8, help="samples to show")
    p.add_argument("--num-classes", type=positive, default=2, help="classes in the masks (for --mask-mode auto)")
    _mask_mode(p)
    p.set_defaults(func=cmd_show_data)

    p = _subparser(sub, "train", "train a segmentation head (or fine-tune) on an image/mask dataset")
    g = {"action": _Given}
    p.add_argument("--data", help="folder with train_images/ train_masks/ valid_images/ valid_masks/, or images/ + "
                   "masks/ with --valid-fraction", **g)  # fmt: skip
    p.add_argument("--valid-fraction", type=float, help="for images/ + masks/: the seeded share held out for "
                   "validation (e.g. 0.15), recorded in split.json", **g)  # fmt: skip
    p.add_argument("--out", default="runs/train", help="run folder (a new -2, -3... is made if it is not empty)", **g)
    p.add_argument("--arch", default="webdino-300m", help="backbone variant (see `webdino-seg info --list`)", **g)
    p.add_argument("--weights", help="official .pth, HF folder, Hub id, https:// URL, or 'random' "
                   "(default: the variant's official .pth URL)", **g)  # fmt: skip
    p.add_argument("--fine-tune", action=_GivenTrue, help="train the backbone too")
    p.add_argument("--num-classes", type=positive, default=2, help="classes, background included", **g)
    p.add_argument("--class-names", nargs="+", help="one name per class (default: background person for 2)", **g)
    _mask_mode(p, **g)
    p.add_argument(
        "--head",
        default="simple",
        choices=["simple", "linear4", "multilayer", "guided"],
        help="decoder head: simple (the tutorial's), linear4 (DINOv2's linear probe on 4 layers), "
        "multilayer (DPT-like fusion of 4 layers), guided (image-guided upsampling of the logits)",
        **g,
    )
    p.add_argument(
        "--loss",
        default="ce",
        choices=["ce", "ce+dice"],
        help="cross-entropy, or cross-entropy plus Dice on the foreground",
        **g,
    )
    _imgsz(p, **g)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate", **g)
    p.add_argument("--batch", type=positive, default=8, help="images per training step", **g)
    p.add_argument("--epochs", type=positive, default=60, help="passes over the training split", **g)
    p.add_argument("--scheduler", action=_GivenTrue, help="multiply the lr by 0.1 at --scheduler-epochs")
    p.add_argument("--scheduler-epochs", type=positive, nargs="+", default=[45], help="epochs where the lr drops",
                   **g)  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N", **g)
    p.add_argument("--workers", type=non_negative, help="data-loader processes (default: one per CPU core, "
                   "at most 8)", **g)  # fmt: skip
    p.add_argument("--seed", type=int, default=42, help="seed of the head's init, augmentation and order", **g)
    p.add_argument("--no-cache", action=_GivenTrue, help="recompute frozen features every epoch (tutorial way)")
    p.add_argument("--cache-views", type=positive, default=4, help="augmented views per training image in the "
                   "cache (never more than --epochs)", **g)  # fmt: skip
    p.add_argument("--feature-cache-dir", help="also keep the feature cache on disk here, reused when unchanged", **g)
    p.add_argument("--cache-memory-gb", type=float, help="largest feature cache kept in memory; a larger one is "
                   "memory-mapped on disk (default: half the free GPU or CPU memory)", **g)  # fmt: skip
    p.add_argument("--no-amp", action=_GivenTrue, help="no bf16 autocast on GPU")
    p.add_argument("--skip-bad", action=_GivenTrue, help="skip unreadable pairs with a warning instead of failing")
    p.add_argument("--resume", metavar="RUN", help="continue the run folder RUN after its last completed epoch "
                   "(--epochs, --device, --workers may change)")  # fmt: skip
    p.set_defaults(func=cmd_train, given=set())

    p = _subparser(sub, "evaluate", "mIoU, per-class IoU and pixel accuracy of a model on a split, full resolution")
    p.add_argument("--data", required=True, help="dataset folder (its --split) or a flat images/ + masks/ folder")
    _model_args(p)
    p.add_argument("--split", default="valid", help="which split of --data to score")
    _mask_mode(p)
    p.add_argument("--out", default=None, help="JSON report path (default: <model>.eval.json)")
    p.add_argument("--report", metavar="DIR", help="also write an HTML report to DIR: scores, confusion matrix, "
                   "curves, every image with ground truth and prediction, worst first")  # fmt: skip
    p.set_defaults(func=cmd_evaluate)

    p = _subparser(sub, "predict", "segment images: overlays and class-id masks")
    p.add_argument("--input", required=True, help="an image, a folder or a glob")
    _model_args(p)
    p.add_argument("--out", default="outputs/predict", help="folder for <name>_overlay.png and <name>_mask.png")
    p.add_argument("--batch", type=positive, default=8, help="images per forward pass")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a message")
    p.set_defaults(func=cmd_predict)

    p = _subparser(sub, "video", "segment a video file or camera into an overlay MP4 (H.264)")
    p.add_argument("--input", required=True, help="a video file, or a camera index such as 0 (camera:0 if a file "
                   "is named 0)")  # fmt: skip
    _model_args(p)
    p.add_argument("--out", help="output .mp4 (default: outputs/<input>_seg.mp4)")
    p.add_argument("--batch", type=positive, default=8, help="frames per forward pass")
    p.add_argument("--max-frames", type=positive, help="stop after this many frames (default: all)")
    p.add_argument("--show", action="store_true", help="also show the frames in a window when a display exists")
    p.set_defaults(func=cmd_video)

    p = _subparser(sub, "demo", "a local web page to upload an image or a short video and see the segmentation")
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to your network)")
    p.add_argument("--port", type=positive, default=7860, help="port to listen on")
    p.add_argument("--max-mb", type=float, default=20, help="largest upload accepted, in MB")
    p.set_defaults(func=cmd_demo)

    p = _subparser(sub, "export", "export a trained model to ONNX (normalisation, backbone, head, upsampling)")
    p.add_argument("--model", required=True, help="a model checkpoint written by train")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the export format")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    _imgsz(p, None)
    p.add_argument("--dynamic", action="store_true", help="any batch size (the image size stays --imgsz)")
    p.add_argument("--weights", help="where the backbone weights are, if not where training found them")
    p.set_defaults(func=cmd_export)

    p = _subparser(sub, "benchmark", "time the tutorial's recipe against ours on one device")
    p.add_argument("--arch", default="webdino-300m", help="backbone variant (random weights: speed does not "
                   "depend on them)")  # fmt: skip
    _imgsz(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="fewer iterations (and smaller batches on a CPU)")
    p.add_argument("--video", help="a video file for the end-to-end video figures")
    p.add_argument("--data", help="a prepared dataset (e.g. data/pennfudan): adds whole training runs, end to end")
    p.add_argument("--epochs", type=positive, default=60, help="our training run's epochs (the full schedule)")
    p.add_argument("--tutorial-epochs", type=positive, default=2, help="real epochs the tutorial's recipe runs "
                   "before it is extrapolated to --epochs")  # fmt: skip
    p.add_argument("--repeats", type=positive, default=3, help="repetitions of every figure (median, min-max)")
    p.add_argument("--cache-views", type=positive, default=4, help="augmented views the cached recipe extracts")
    p.add_argument("--out", help="also write the figures as JSON here")
    p.set_defaults(func=cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, with a one-line message unless --debug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    except (ValueError, OSError, RuntimeError) as err:
        if args.debug:
            raise
        message = "; ".join(line.strip() for line in (str(err) or type(err).__name__).splitlines() if line.strip())
        print(f"webdino-seg {args.command}: error: {message} (--debug shows details)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
