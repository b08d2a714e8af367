"""Text built from names that come from outside (file names, class names, URLs, paths): shell commands the
tool prints, HTML it renders, and values cut short for messages. Every such interpolation goes through here."""

from __future__ import annotations

import html
import shlex
from pathlib import Path
from urllib.parse import quote


def command(*args: object) -> str:
    """A command line as the tool prints it, every argument shell-quoted: pasted into a shell, it runs exactly
    these arguments (``command("webdino-seg", "train", "--resume", run)``)."""
    return shlex.join(str(a) for a in args)


def escape(value: object) -> str:
    """`value` as HTML text or a quoted attribute value: ``& < > " '`` escaped."""
    return html.escape(str(value), quote=True)


def url(path: str | Path) -> str:
    """A relative file path as an attribute URL: each part percent-encoded (so ``#``, ``?``, ``%``, quotes and
    spaces stay part of the name), then HTML-escaped."""
    return escape(quote(str(path).replace("\\", "/"), safe="/"))


def clip(text: str, limit: int = 80) -> str:
    """`text` at most `limit` characters long (a long one ends with its length), for error messages."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}... ({len(text)} characters)"


def cut(value: object, limit: int = 80) -> str:
    """`repr(value)` clipped to `limit` characters, for error messages."""
    return clip(repr(value), limit)
