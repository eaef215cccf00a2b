#!/usr/bin/env bash
# Device check for a GPU machine (H100, torch 2.11 / CUDA 13.0, no network):
# build, info, the whole test suite on CUDA, compute-sanitizer memcheck on a
# small kernel workload, a short benchmark.  Every log and summary.txt go to
# OUTDIR.  Each step has a timeout and runs even when an earlier one failed;
# the step timeouts add up to 7m35s, so the script ends in under 8 minutes.
# The benchmark writes results.json and speedup.png to OUTDIR too.
#
#   bash benchmarks/device_check.sh OUTDIR        (from the repository root)
#
# Build: `python setup.py build_ext --inplace` with PYTHONPATH=$PWD for every
# step, not `pip install .`: the steps then import exactly this tree's
# package and the extensions just built (no stale or shadowing install in
# site-packages can be picked up), nothing outside the tree is written, and
# no wheel is packed and unpacked.  --no-build-isolation is implied: the
# machine's torch is the one built against.
set -u

OUT=${1:?usage: device_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x /opt/torch/.venv/bin/python3 ]; then PY=/opt/torch/.venv/bin/python3; else PY=python3; fi
fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST=9.0
export MAX_JOBS=$(nproc)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
START=$(date +%s)

{
  echo "mnv3_kernels device check  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "python: $PY"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: unavailable"
  echo
  printf '%-12s %5s %7s  %s\n' step rc wall_s log
} >"$SUMMARY"

# step NAME TIMEOUT_S CMD...: runs CMD with a timeout, logs to OUT/NAME.log,
# appends rc and wall time to summary.txt; never stops the script.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  echo "== $name: $*" | tee "$OUT/$name.log"
  timeout -k 2 "$limit" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  [ $rc -eq 124 ] && echo "== $name: TIMED OUT after ${limit}s" >>"$OUT/$name.log"
  printf '%-12s %5s %7s  %s\n' "$name" "$rc" "$dt" "$name.log" >>"$SUMMARY"
  echo "== $name: rc=$rc in ${dt}s"
  tail -n 5 "$OUT/$name.log"
}

step build 90 "$PY" setup.py build_ext --inplace
step info 15 "$PY" -m mnv3_kernels.info
step test_ops 100 "$PY" -m pytest -q -p no:cacheprovider --durations=10 tests --ignore=tests/test_cuda_model.py
step test_model 85 "$PY" -m pytest -q -p no:cacheprovider --durations=10 tests/test_cuda_model.py
if command -v compute-sanitizer >/dev/null 2>&1; then
  step memcheck 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
    "$PY" benchmarks/sanitize_kernels.py
else
  echo "compute-sanitizer not found" >"$OUT/memcheck.log"
  printf '%-12s %5s %7s  %s\n' memcheck missing 0 memcheck.log >>"$SUMMARY"
fi
# The main benchmark CLI, narrowed: eager vs the CUDA and Triton backends and
# CUDA-graph replay, Large and Small, batch 1 and 64, fp32 and fp16.
step bench 90 "$PY" -m mnv3_kernels.bench --device cuda --batch 1 64 --dtype fp32 fp16 --min-run-time 0.2 \
  --variants eager fused-native fused-native-graph fused-triton --out "$OUT"

{
  echo
  echo "total wall: $(($(date +%s) - START)) s"
  echo
  echo "benchmark (median ms per forward):"
  sed -n '/^model/,$p' "$OUT/bench.log" 2>/dev/null
} >>"$SUMMARY"
cat "$SUMMARY"
