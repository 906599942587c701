#!/usr/bin/env bash
# The GPU path in one idempotent script (issue 19): install what the CUDA image lacks from wheels beside the repo,
# run the `cuda` tests, then the GPU benches, and print one table. Budget: under 8 minutes on an H200.
#
#   bash bench/gpu_wheels.sh          # once, where PyPI is reachable: downloads the missing wheels into .whl/
#   bash bench/gpu_check.sh [OUTDIR]  # on the GPU machine (no network): .whl/ travels with the repo
#
# The machine's own python3 (with its CUDA PyTorch) is used; saescope runs from src/ without being installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/saescope-site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/saescope-site" || { echo "wheel install failed"; exit 1; }
fi
$PY - <<'PY' || exit 1
import torch
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PY
start=$(date +%s)
echo "== cuda tests"
timeout 240 $PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -o addopts="" -rs 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
echo "== benches ($(( $(date +%s) - start )) s in)"
timeout 300 $PY bench/gpu_bench.py ${GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu_bench.md"
bench_rc=${PIPESTATUS[0]}
echo "== done in $(( $(date +%s) - start )) s: cuda tests rc=$tests_rc, bench rc=$bench_rc (logs in $OUT)"
exit $(( tests_rc || bench_rc ))
