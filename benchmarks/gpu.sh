#!/usr/bin/env bash
# On a machine with one CUDA GPU: the GPU tests, then the full benchmark table for Web-DINO 300M at
# 644x644 on Penn-Fudan (146 train / 24 valid), with random weights (speed does not depend on them).
# Fits in 10 minutes on an H100/H200. Results: benchmarks/results/gpu_*.{txt,json}.
#   ARCH=webdino-tiny IMGSZ="56 56" DEVICE=cpu QUICK=--quick benchmarks/gpu.sh   # a dry run of the plumbing on a CPU
#   PARTS=tests benchmarks/gpu.sh; PARTS=benchmark benchmarks/gpu.sh          # one part at a time (e.g. one per call)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared/data}
arch=${ARCH:-webdino-300m}
imgsz=${IMGSZ:-644 644}
device=${DEVICE:-cuda}
quick=${QUICK:-}
parts=${PARTS:-tests benchmark}
out=benchmarks/results
mkdir -p "$out"
python - <<'PY'
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
if [ "$device" = cuda ] && [[ " $parts " == *" tests "* ]]; then
  python -m pytest -m cuda -q -p no:cacheprovider 2>&1 | tee "$out/gpu_pytest.txt"
fi
[[ " $parts " == *" benchmark "* ]] || exit 0
data=$(mktemp -d)/pennfudan
webdino-seg prepare-data --source "$shared/PennFudanPed" --out "$data"
# shellcheck disable=SC2086
webdino-seg benchmark --arch "$arch" --imgsz $imgsz --device "$device" $quick --data "$data" \
    --video "$shared/videos/people_walking_close.mp4" --out "$out/gpu_${arch}.json" | tee "$out/gpu_${arch}.txt"
