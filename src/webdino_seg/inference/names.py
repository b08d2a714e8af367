"""The names of the inference choices, importable without torch (the CLI's choices read them)."""

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # inference/precision.py runs each
ENGINES = ("auto", "torch", "openvino")
