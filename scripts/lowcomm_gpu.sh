#!/usr/bin/env bash
# The DiLoCo loss bar at length on a GPU machine (docs/lowcomm.md, "The benchmark"): ddp and DiLoCo with the
# benchmark's protocol (TinyGPT tiny, 4 workers, H 50, batch 16), seeds interleaved, every worker on the first
# GPU (ddp over gloo through host memory when there are fewer GPUs than workers). The JSON is written after every
# run, so a run cut short by a time limit keeps the finished ones; `python3 bench/lowcomm.py --combine` joins the
# files of several sessions into one table. Without CUDA it says so and exits 0.
# Usage: bash scripts/lowcomm_gpu.sh [ROUNDS] [SEEDS] [more bench/lowcomm.py flags, e.g. --size small]
#        (default 600 0,1,2; results in $OUT or bench/results, or where a --out given here says)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
rounds="${1:-600}"
seeds="${2:-0,1,2}"
shift $(( $# < 2 ? $# : 2 ))
out="${OUT:-bench/results}/lowcomm-gpu-${rounds}rounds-seeds-${seeds//,/-}"
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "lowcomm_gpu: no CUDA device here; nothing to run"
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec python3 bench/lowcomm.py --device cuda --rounds "$rounds" --seeds "$seeds" --algorithms ddp,diloco --no-kill \
    --eval-every 10 --out "$out" "$@"
