#!/usr/bin/env bash
# CUDA checks (CUDA IPC both ways, event ordering, memory release, SIGKILL of a consumer, placement on the GPUs,
# the LM example on the GPU and ddp over NCCL). Needs a GPU; without
# one it says so and exits 0. Usage: bash scripts/gpu_check.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 scripts/gpu_check.py "$@"
