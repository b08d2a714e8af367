"""Shared helpers every layer may use: atomic file writes, downloads, the device and precision policy,
confusion-matrix metrics and mask overlays. Imports nothing else from the package."""
