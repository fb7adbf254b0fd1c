#!/usr/bin/env bash
# bench.gpu in one short go on a GPU machine: the card as nvidia-smi sees it, then the bench (further arguments go
# to it), its output also written to $OUT/gpu-bench.txt (default: the current folder).
#
#   PYTHON=.venv/bin/python bench/gpu_run.sh [--n 8192 --rounds 3]
#
# PYTHON: a dev install of embedq with a CUDA build of torch (pip install -e '.[worker-gpu,test]');
# GPU_BENCH_TIMEOUT_S: the bench is stopped after this long (default 420), so a stuck card cannot hold the machine.
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=${OUT:-.}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu-card.txt" || true
timeout "${GPU_BENCH_TIMEOUT_S:-420}" "$PYTHON" -m bench.gpu "$@" 2>&1 | tee "$OUT/gpu-bench.txt"
