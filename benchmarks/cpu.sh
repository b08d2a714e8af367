#!/usr/bin/env bash
# The CPU benchmark tables (no targets; compare between versions on the same machine).
# 1. the whole recipe end to end with the tiny backbone at 224x224 on Penn-Fudan (146 train / 24 valid);
# 2. Web-DINO 300M at 224x224: backbone and video only (--quick), since its training runs take hours on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared/data}
out=benchmarks/results
mkdir -p "$out"
data=$(mktemp -d)/pennfudan
webdino-seg prepare-data --source "$shared/PennFudanPed" --out "$data"
webdino-seg benchmark --arch webdino-tiny --imgsz 224 224 --device cpu --data "$data" \
    --video examples/people_walking_clip.mp4 --out "$out/cpu_tiny_224.json" | tee "$out/cpu_tiny_224.txt"
webdino-seg benchmark --arch webdino-300m --imgsz 224 224 --device cpu --quick \
    --video examples/people_walking_clip.mp4 --out "$out/cpu_webdino300m_224_quick.json" | tee "$out/cpu_webdino300m_224_quick.txt"
