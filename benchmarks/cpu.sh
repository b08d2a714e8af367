#!/usr/bin/env bash
# The CPU benchmark table (no targets; compare between versions on the same machine).
set -euo pipefail
video=${VIDEO:-examples/people_walking_clip.mp4}
mkdir -p benchmarks/results
webdino-seg benchmark --arch webdino-300m --quick --device cpu --video "$video" --out benchmarks/results/cpu_webdino300m_quick.json
webdino-seg benchmark --arch webdino-tiny --imgsz 224 224 --device cpu --video "$video" --out benchmarks/results/cpu_tiny_224.json
