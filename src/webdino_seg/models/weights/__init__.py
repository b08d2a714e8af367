"""Backbone weights: reading files and sources, one key table per backbone family, format detection,
strict loading, and conversion."""
