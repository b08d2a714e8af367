"""The quickstart: train on the bundled Penn-Fudan sample, predict its valid images, segment the clip.

Offline and on a CPU in about a minute. The backbone has RANDOM weights (nothing is downloaded),
so this checks that everything runs; it is not a model. `make quickstart` runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from webdino_seg import Predictor, TrainConfig, run_video, train
from webdino_seg.inference.predict import predict_paths

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Train, predict, segment the video; print where each output went."""
    cfg = TrainConfig(
        data=str(HERE / "pennfudan-sample"),
        out="runs/quickstart",
        arch="webdino-tiny",
        weights="random",
        imgsz=(224, 224),
        epochs=10,
        lr=1e-3,
    )
    run = train(cfg)
    model = run / "best_model_iou.pth"
    predictor = Predictor.from_checkpoint(model)
    images = predict_paths(predictor, HERE / "pennfudan-sample" / "valid_images", run / "predict")
    video = run_video(predictor, HERE / "people_walking_clip.mp4", run / "people_walking_seg.mp4")
    print(
        "\nquickstart outputs:\n"
        f"  run folder (checkpoints, metrics.csv, curves): {run}\n"
        f"  model:        {model}\n"
        f"  curves:       {run / 'miou.png'}, {run / 'loss.png'}, {run / 'accuracy.png'}\n"
        f"  valid images: {run / 'valid_preds'} (ground truth beside prediction)\n"
        f"  predict:      {run / 'predict'} ({images['images']} overlays and masks)\n"
        f"  video:        {video['output']} ({video['frames']} frames, {video['fps']:.1f} FPS end to end)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
