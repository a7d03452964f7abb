#!/usr/bin/env bash
# Every inference benchmark on one GPU in one go (< 8 minutes on an H100 / H200), ours against the
# official path in the same process; one JSON per bench, summary.json and log.txt under $OUT, and
# issue #7's acceptance table (bench/summarize.py) at the end of the log.
#   on the CPU machine, once:  bash bench/prepare_gpu.sh
#   on the device:             run(command="bash bench/run_gpu.sh", carry=[".bench_gpu"], timeout_s=540)
# Each step has its own time limit, so one slow step cannot eat the others' time.
# Smoke test anywhere: ARCH=tiny SLICES=20 bash bench/run_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-results}"
STAGE="$PWD/.bench_gpu"
PYTHON="${PYTHON:-python3}"
ARCH="${ARCH:-vit_b}"
SLICES="${SLICES:-200}"
mkdir -p "$OUT"
[ -f "$STAGE/icbm152.npz" ] || { echo "missing $STAGE: run bash bench/prepare_gpu.sh first (and carry .bench_gpu)"; exit 2; }
export PYTHONPATH="$STAGE/site:$PWD/MedicoSAMSlicer:$PWD/MedicoSAMTraining${PYTHONPATH:+:$PYTHONPATH}"
export MEDICOSAM_BENCH_VOLUME="$STAGE/icbm152.npz"
export PYTHONUNBUFFERED=1

step() {  # step NAME LIMIT_S SCRIPT ARGS...: run one bench, keep going if it fails
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s) $(date +%T)"
    timeout "$limit" "$PYTHON" "$@" --json "$OUT/$name.json" || echo "== $name FAILED or timed out (rc=$?)"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    step encoder 200 bench/encoder.py --arch "$ARCH" --batch-sizes 1 8 --repeat 20
    step decoder 50 bench/decoder.py --arch "$ARCH" --objects 8
    step propagation 120 bench/propagation.py --arch "$ARCH" --slices "$SLICES" --batch-size 8
    if [ -f bench/train_step.py ]; then
        step train_step 90 bench/train_step.py --arch "$ARCH"
        step train_step_lite 60 bench/train_step.py --arch litemedsam --repeat 10
    fi
    step sam2_propagation 90 bench/sam2_propagation.py --arch "$ARCH" --fast
    "$PYTHON" bench/summarize.py "$OUT" --json "$OUT/summary.json" || true
    echo "== done $(date +%T)"
} 2>&1 | tee "$OUT/log.txt"
