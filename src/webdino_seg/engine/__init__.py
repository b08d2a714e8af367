"""Training: settings and the run folder, the frozen-feature cache, batches, losses, torchrun helpers,
the artifacts a run ends with (curves, valid_preds) and the training loop."""
