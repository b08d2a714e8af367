"""The error every data reader raises for a folder or file it cannot use."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset folder that cannot be used; the message names the folder or file."""
