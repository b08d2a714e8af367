"""The names of the inference choices, importable without torch (the CLI's choices read them)."""

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # inference/precision.py runs each
ENGINES = ("auto", "torch", "openvino")
EXPORT_FORMATS = ("onnx", "openvino")  # inference/formats.py gives each its suffix, exporter and runtime
EVAL_SPLITS = ("train", "valid", "test", "all")  # what evaluate --split scores (all: every split)
