#!/usr/bin/env bash
# GPU check of the qm Triton kernels, for a lent GPU machine (torch + triton + CuPy, no TensorRT,
# no network). Budget: at most 5.3 minutes of step limits, usually less. Everything goes to $OUT (created if unset); a failing
# step is logged and the next one still runs. Run from anywhere:
#     OUT=/tmp/qm-gpu bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
PY="${PYTHON:-python3}"
status=0

step() {  # step NAME TIMEOUT_S COMMAND...
    local name="$1" limit="$2"; shift 2
    echo "=== $name ($(date +%T), limit ${limit}s)" | tee -a "$OUT/summary.txt"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "=== $name: exit $rc" | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || status=1
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1
    "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__)" 2>&1
    "$PY" -c "import cupy; print('cupy', cupy.__version__)" 2>&1
    git log -1 --format='commit %H %s' 2>/dev/null
} >"$OUT/env.txt"
cat "$OUT/env.txt"

# 1. Correctness, determinism, custom ops, AOT PTX launched with CuPy with exactly TensorRT's
#    arguments, BF16 array interface.
step gpu_kernel_check 120 "$PY" scripts/gpu_kernel_check.py --out "$OUT"
# 2. Benchmark table (bench.md / bench.json).
step bench_kernels 150 "$PY" scripts/bench_kernels.py --out "$OUT"
# 3. The pytest kernel tests on CUDA, when pytest is installed.
if "$PY" -c "import pytest" 2>/dev/null; then
    step pytest_kernels_cuda 45 env QM_KERNEL_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py
fi

echo "overall exit $status" | tee -a "$OUT/summary.txt"
exit "$status"
