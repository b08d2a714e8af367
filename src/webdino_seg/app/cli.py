"""The `webdino-seg` command: runs the subcommand `parser.py` parsed; each one calls into the package."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..utils.safetext import command
from .parser import build_parser


def cmd_info(args: argparse.Namespace) -> None:
    import torch

    from ..models.builder import create_model
    from ..models.layers import check_image_size
    from ..models.summary import model_summary
    from ..models.variants import VARIANTS

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
    from ..models.variants import get_variant
    from ..models.weights.convert import convert_weights

    cfg = get_variant(args.arch) if args.arch else None
    fmt = convert_weights(args.input, args.output, args.to, cfg, args.overwrite)
    print(f"converted {args.input} ({fmt}) -> {args.output} ({args.to})")


def cmd_prepare_data(args: argparse.Namespace) -> None:
    if args.format == "pennfudan":
        from ..data.pennfudan import prepare_pennfudan

        if len(args.source) > 1:
            raise ValueError("--format pennfudan takes one --source: the release's folder or zip")
        info = prepare_pennfudan(args.source[0], args.out, args.valid_count, args.seed)
        print(f"wrote {info['train']} train and {info['valid']} valid pairs to {info['out']} (split in split.json)")
        return
    from ..data.formats.prepare import prepare_dataset

    info = prepare_dataset(
        args.format,
        args.source,
        args.out,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        class_names=args.class_names,
        ignore_index=args.ignore_index,
        reduce_labels=args.reduce_labels,
        images=args.images,
    )
    nxt = command("webdino-seg", "show-data", info["out"])
    counts = (
        f"{info['train']} train, {info['valid']} valid and {info['test']} test"
        if info.get("test")
        else (f"{info['train']} train and {info['valid']} valid")
    )
    print(
        f"wrote {counts} pairs of {info['classes']} classes to {info['out']} (classes in {info['classes_file']}, "
        f"split in split.json); next: {nxt}"
    )


def cmd_download_data(args: argparse.Namespace) -> None:
    from ..data.pennfudan import PENNFUDAN_URL, download_pennfudan

    path = download_pennfudan(args.out, args.url or PENNFUDAN_URL, args.sha256)
    nxt = command("webdino-seg", "prepare-data", "--source", path, "--out", "data/pennfudan")
    print(f"downloaded {path}; next: {nxt}")


def cmd_show_data(args: argparse.Namespace) -> None:
    from ..data.preview import show_data

    data = args.data or args.data_pos
    if not data:
        raise ValueError("--data is required: a dataset folder (train_images/ ... or images/ + masks/)")
    out = show_data(
        data,
        args.out,
        split=args.split,
        count=args.count,
        mask_mode=args.mask_mode,
        num_classes=args.num_classes,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from ..engine import distributed

    try:
        _train(args)
    finally:
        distributed.teardown()


def _train(args: argparse.Namespace) -> None:
    from ..engine.config import read_settings
    from ..engine.train import TrainConfig, resume, train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k: v for k, v in vars(args).items() if k in names}
    settings |= {"cache": not args.no_cache, "amp": not args.no_amp}
    if args.config:
        if args.resume:
            raise ValueError("--config and --resume: a resumed run keeps the settings in its own config.yaml")
        # the file's settings, then the flags given on the command line over them
        settings |= read_settings(args.config) | {k: v for k, v in settings.items() if k in args.given}
    if args.resume:
        given = {k: v for k, v in settings.items() if k in args.given}
        resume(args.resume, given)
        return
    if not settings["data"]:
        raise ValueError(
            "--data is required: a folder with train_images/ train_masks/ valid_images/ valid_masks/ "
            "(masks are PNGs of class ids). Try the bundled sample: --data examples/pennfudan-sample, or make "
            "the full set with `webdino-seg prepare-data --source PennFudanPed --out data/pennfudan`"
        )
    train(TrainConfig(**settings))


def cmd_sweep(args: argparse.Namespace) -> None:
    from ..engine.config import TrainConfig
    from ..engine.sweep import read_sweep_file, resume_sweep, sweep

    if args.resume:
        if args.config or args.given - {"resume"}:
            raise ValueError("--resume continues a sweep with its own settings: give no other settings with it")
        resume_sweep(args.resume)
        return
    listed = ("head", "lr", "loss", "batch")  # the flags that take lists
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(listed)
    settings = {k: v for k, v in vars(args).items() if k in names}
    settings |= {"cache": True, "amp": not args.no_amp}
    grid = {k: getattr(args, k) for k in listed if k == "head" or k in args.given}
    if args.config:
        found, file_grid = read_sweep_file(args.config)
        settings = found | {k: v for k, v in settings.items() if k in args.given}
        grid = file_grid | {k: v for k, v in grid.items() if k in args.given}
    if not settings.get("data"):
        raise ValueError("--data is required: a dataset folder (train_images/ ... or images/ + masks/)")
    sweep(TrainConfig(**settings), grid)


def _model_files(args: argparse.Namespace) -> tuple[Path, ...]:
    """The files a command reads its model from: never to be written over."""
    return tuple(Path(p) for p in (args.model, args.weights) if p and Path(p).is_file())


def _predictor(args: argparse.Namespace):
    """The Predictor for a command's --model, --device, --imgsz and --weights."""
    from ..inference.predictor import Predictor
    from ..utils.runtime import set_threads

    set_threads(args.threads)
    predictor = Predictor.from_checkpoint(
        args.model,
        device=args.device,
        imgsz=tuple(args.imgsz) if args.imgsz else None,
        weights=args.weights,
        tta=args.tta,
        tile=getattr(args, "tile", False),
        precision=args.precision,
        engine=args.engine,
    )
    if predictor.tta:
        print(predictor.describe_tta(), file=sys.stderr)
    if predictor.precision_note:
        built = getattr(predictor.model, "build_seconds", None)  # OpenVINO's: exported and compiled once
        print(predictor.precision_note + (f"; built in {built:.1f}s" if built else ""), file=sys.stderr)
    if predictor.quantized and getattr(args, "debug", False):
        print(
            f"int8 ({predictor.engine}): {len(predictor.quantized)} Linear layers quantized: "
            f"{', '.join(predictor.quantized)}",
            file=sys.stderr,
        )
    return predictor


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ..inference.evaluate import evaluate, format_report, plan_evaluate

    plan_evaluate(args.model, args.data, args.out, args.report, args.overwrite)  # before the model is loaded
    report = evaluate(
        _predictor(args),
        args.model,
        args.data,
        split=args.split,
        mask_mode=args.mask_mode,
        out=args.out,
        report_dir=args.report,
        overwrite=args.overwrite,
        ignore_index=args.ignore_index,
        reduce_labels=args.reduce_labels,
    )
    print(format_report(report))
    if args.report:
        print(f"HTML report: {report['html_report']} (open it in a browser; works offline)")


def cmd_predict(args: argparse.Namespace) -> None:
    from ..inference.predict import plan_outputs, predict_paths

    plan_outputs(args.input, args.out, args.overwrite, _model_files(args), args.save_probs)  # before the model loads
    info = predict_paths(
        _predictor(args),
        args.input,
        args.out,
        batch=args.batch,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        mask_values=args.mask_values,
        save_probs=args.save_probs,
    )
    print(
        f"{info['images']} image(s) -> {args.out} in {info['seconds']:.2f}s ({info['images_per_second']:.1f} images/s)"
    )


def video_environment() -> None:
    """Set `VIDEO_ENVIRONMENT`'s variables that the environment leaves unset (takes effect if torch is not yet
    loaded, as in a `webdino-seg video` process)."""
    from ..utils.constants import VIDEO_ENVIRONMENT

    for name, value in VIDEO_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def cmd_video(args: argparse.Namespace) -> None:
    video_environment()  # before torch loads
    from ..inference.video import is_camera, plan_video, run_video

    src = args.input
    name = "camera" + src.removeprefix("camera:") if is_camera(src) else Path(src).stem
    out = plan_video(src, args.out or Path("outputs") / f"{name}_seg.mp4", args.overwrite, _model_files(args))
    predictor = _predictor(args)  # only once the output is known to be safe
    info = run_video(
        predictor,
        src,
        out,
        batch=args.batch,
        max_frames=args.max_frames,
        show=args.show,
        overwrite=args.overwrite,
        fps_label=not args.no_fps_label,
    )
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
    from ..inference.formats import choose

    choose(args.format, args.out).export()(
        args.model,
        args.out,
        imgsz=tuple(args.imgsz) if args.imgsz else None,
        dynamic=args.dynamic,
        weights=args.weights,
        overwrite=args.overwrite,
        int8=args.int8,
    )


def cmd_benchmark(args: argparse.Namespace) -> None:
    import json

    from ..utils.files import atomic_write_text, check_output_file
    from ..utils.outputs import MARK, check_suffix, guard, may_replace
    from .benchmark import benchmark, format_table

    if args.out:  # checked before anything is measured
        check_suffix(check_output_file(Path(args.out)), (".json",), "benchmark writes its figures as JSON")
        guard([Path(args.out)], [Path(p) for p in (args.video, args.data) if p])
        may_replace(Path(args.out), args.overwrite)
    res = benchmark(
        args.arch,
        tuple(args.imgsz),
        args.device,
        quick=args.quick,
        video=args.video,
        views=args.cache_views,
        log=lambda m: print(m, file=sys.stderr),
        data=args.data,
        repeats=args.repeats,
        epochs=args.epochs,
        tutorial_epochs=args.tutorial_epochs,
    )
    print(format_table(res))
    if args.out:
        atomic_write_text(args.out, json.dumps({"format": f"{MARK}/benchmark", **res}, indent=2) + "\n")


COMMANDS = {
    "info": cmd_info,
    "convert-weights": cmd_convert_weights,
    "prepare-data": cmd_prepare_data,
    "download-data": cmd_download_data,
    "show-data": cmd_show_data,
    "train": cmd_train,
    "sweep": cmd_sweep,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "video": cmd_video,
    "demo": cmd_demo,
    "export": cmd_export,
    "benchmark": cmd_benchmark,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (kill, timeout, a closed terminal): the command stops as it does on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """For the command's length, SIGTERM and SIGHUP raise `Terminated` in the main thread, so every clean-up a
    Ctrl-C runs (temp files, threads, loader workers) runs for them too; the old handlers come back after."""
    wanted = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    previous = {s: signal.signal(s, _terminate) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, with a one-line message unless --debug; 130 after
    Ctrl-C, 128 + the signal's number after SIGTERM or SIGHUP)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _stop_on_signals():
            COMMANDS[args.command](args)
    except Terminated as stop:
        print(f"stopped by {signal.Signals(stop.signum).name}", file=sys.stderr)
        return 128 + stop.signum
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
