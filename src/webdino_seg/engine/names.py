"""The names of the engine's choices, importable without torch (the CLI's choices read them)."""

LOSSES = ("ce", "ce+dice")  # engine/losses.py computes each
