"""Inference on a trained model: the Predictor, `predict` on images, `video`, `evaluate` with its HTML
report, and ONNX export and running."""
