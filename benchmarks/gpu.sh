#!/usr/bin/env bash
# The GPU benchmark table for Web-DINO 300M at 644x644 (random weights: speed does not depend on them).
set -euo pipefail
video=${VIDEO:-../shared/data/videos/people_walking_close.mp4}
mkdir -p benchmarks/results
webdino-seg benchmark --arch webdino-300m --imgsz 644 644 --device cuda --video "$video" --out benchmarks/results/gpu_webdino300m.json
