"""The names of what the models package builds, importable without torch (the CLI's choices read them)."""

HEAD_NAMES = ("simple", "linear4", "multilayer", "guided")  # models/heads.py gives each its class
