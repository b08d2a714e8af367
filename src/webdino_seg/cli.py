"""The `webdino-seg` command: argument parsing only; every subcommand calls into the package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _imgsz(parser: argparse.ArgumentParser, default: tuple[int, int] | None = (644, 644)) -> None:
    parser.add_argument(
        "--imgsz",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=default,
        help="input height and width, multiples of 14" + (f" (default {default[0]} {default[1]})" if default else ""),
    )


def cmd_info(args: argparse.Namespace) -> None:
    import torch

    from .backbone import check_image_size
    from .factory import create_model
    from .summary import model_summary

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


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="webdino-seg", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print the model's layer table and parameter counts")
    p.add_argument("--arch", default="webdino-300m")
    _imgsz(p)
    p.add_argument("--num-classes", type=int, default=2)
    p.add_argument("--fine-tune", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert-weights", help="convert a checkpoint between official .pth and Hugging Face")
    p.add_argument("input", help="official .pth, HF folder or .safetensors, URL or Hub id")
    p.add_argument("output", help="a .pth file (--to official) or a folder (--to hf)")
    p.add_argument("--to", choices=["hf", "official"], required=True)
    p.add_argument("--arch", help="variant, when it cannot be told from the file")
    p.set_defaults(func=cmd_convert_weights)
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
    except (ValueError, OSError, RuntimeError) as err:
        if args.debug:
            raise
        message = str(err) or type(err).__name__
        print(f"webdino-seg {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
