#!/usr/bin/env bash
# Device check for the lent GPU machine (one H200: sm_90, 132 SMs, 16 cores,
# torch 2.11 / CUDA 13.0, no network), at most 7 minutes, the build included.
# Steps in the order of what they are worth, each with a budget (seconds):
#
#   build       in place, CUDA arch 9.0 only, MAX_JOBS = cores           140
#   info        python -m mnv3_kernels.info                               10
#   cuda_ops    tests/test_cuda_ops.py on the GPU, -x                     50
#   cuda_model  tests/test_cuda_model.py + test_cuda_plan.py, -x          40
#   memcheck    compute-sanitizer over benchmarks/sanitize_kernels.py     40
#   racecheck     (our kernels only, references on the CPU, every        30
#   synccheck     launch branch)                                         30
#   bench       Large + Small, batch 1 and 256, fp16: eager, eager_cl,    80
#               compile, fused-native, fused-native-graph, fused-native-frozen
#   triton      tests/test_triton.py on the GPU        while time remains
#   bench_more  the rest of the bench grid             while time remains
#
# A failed or timed-out step does not stop the later ones, but the script
# exits 1 when any step failed or timed out (summary.txt says which, and the
# last lines of its log).  A step started "while time remains" gets what is
# left of the 7 minutes; cut at that deadline it counts as cut, not failed.
# A sanitizer that refuses the device (gVisor machines) is reported as not
# supported on this machine, not as a failure.
#
# OUT receives at most 6 files (8 come back from the GPU machine):
#   summary.txt   every step's status, wall time and why; the bench table
#   results.json  the bench step's results, written after every case
#   speedup.png   its plot
#   logs.tar.gz   every step's log and bench_more's results (refreshed after each step)
#
#   bash benchmarks/device_check.sh OUT            (from anywhere)
#   bash benchmarks/device_check.sh --dry-run OUT  (no GPU: checks this script's logic)
#
# --dry-run replaces every step's command by a stand-in that succeeds at once
# (the bench by a tiny CPU run, so results.json and speedup.png are real),
# with 1-second budgets, and plants faults named in MNV3_DRY_RUN_FAIL
# (step=fail | step=timeout | step=unsupported, comma separated).  CI runs it
# through tests/test_device_check.py.
#
# The build is `setup.py build_ext --inplace` with PYTHONPATH=$ROOT, not
# `pip install .`: every step imports exactly this tree and its fresh
# extensions, nothing outside the tree is written, and the machine's torch
# is the one built against.
set -u

DRY=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY=1
  shift
fi
OUT=${1:?usage: device_check.sh [--dry-run] OUT}
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

TOTAL_BUDGET=420  # seconds: the 7 minutes
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
SUMMARY="$OUT/summary.txt"
START=$(date +%s)
FAILED=()
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -x --durations=5)
SANITIZE=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --error-exitcode 99)
BENCH_ARGS=(--device cuda --min-run-time 0.2 --rounds 3)

{
  echo "mnv3_kernels device check$([ $DRY = 1 ] && echo ' (DRY RUN: stand-in commands)')  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "python: $PY"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: unavailable"
  echo
  printf '%-11s %-30s %6s %6s\n' step status wall_s budget
} >"$SUMMARY"

planted() {  # planted NAME: the fault MNV3_DRY_RUN_FAIL plants in step NAME, if any
  local item faults=${MNV3_DRY_RUN_FAIL:-}
  for item in ${faults//,/ }; do
    [ "${item%%=*}" = "$1" ] && { echo "${item#*=}"; return; }
  done
  echo ""
}

pack_logs() { tar -czf "$OUT/logs.tar.gz.tmp" -C "$LOGS" . && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"; }

# step NAME KIND BUDGET CMD...: runs CMD under a timeout, its output in NAME.log.
#   KIND required: a failure or timeout fails the check;
#        sanitizer: as required, but a sanitizer that cannot start on this machine is "not supported";
#        optional:  runs while time remains, with at most what is left; cut there, it is "cut".
step() {
  local name=$1 kind=$2 budget=$3
  shift 3
  local log="$LOGS/$name.log" left=$((TOTAL_BUDGET - ($(date +%s) - START)))
  if [ "$kind" = optional ]; then
    if [ "$left" -lt 10 ]; then
      printf '%-11s %-30s %6s %6s\n' "$name" "skipped (no time left)" 0 "$left" >>"$SUMMARY"
      return
    fi
    budget=$left
  fi
  local fault=""
  if [ $DRY = 1 ] && [ "$name" != bench ] && [ "$name" != bench_more ]; then
    budget=1
    fault=$(planted "$name")
    case "$fault" in  # the stand-ins
      fail) set -- bash -c "echo 'dry run: planted failure'; exit 3" ;;
      timeout) set -- sleep 30 ;;
      unsupported) set -- bash -c "echo '========= Error: Device not supported (dry run)'; exit 1" ;;
      *) set -- bash -c "echo 'dry run: $name ok'" ;;
    esac
  fi
  local t0=$(date +%s)
  echo "== $name ($kind, budget ${budget}s): $*" >"$log"
  timeout -k 2 "$budget" "$@" >>"$log" 2>&1
  local rc=$? dt=$(($(date +%s) - t0)) status
  if [ $rc -eq 0 ]; then
    status=ok
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    if [ "$kind" = optional ]; then status="cut at the deadline"; else status="TIMED OUT"; fi
  elif [ "$kind" = sanitizer ] && [ $rc -ne 99 ] && ! grep -q '^sanitize_kernels: start' "$log"; then
    status="not supported on this machine"  # the sanitizer exited before our script ran
  else
    status="FAILED (rc $rc)"
  fi
  case "$status" in
    "TIMED OUT" | FAILED*) FAILED+=("$name") ;;
  esac
  printf '%-11s %-30s %6s %6s\n' "$name" "$status" "$dt" "$budget" >>"$SUMMARY"
  if [ "$status" != ok ]; then
    tail -n 4 "$log" | sed 's/^/            | /' >>"$SUMMARY"
  fi
  echo "== $name: $status in ${dt}s"
  pack_logs
}

# bench_step NAME KIND BUDGET ARGS...: the bench CLI, results into $LOGS/NAME/.
bench_step() {
  local name=$1 kind=$2 budget=$3
  shift 3
  if [ $DRY = 1 ]; then  # a tiny CPU run of the real CLI
    set -- --device cpu --models small --batch 1 --size 32 --variants eager eager_cl --min-run-time 0.01 --rounds 1
    [ "$(planted "$name")" = fail ] && set -- --rounds 0
    [ "$kind" = required ] && budget=60
  fi
  step "$name" "$kind" "$budget" "$PY" -m mnv3_kernels.bench "$@" --out "$LOGS/$name"
}

step build required 140 "$PY" setup.py build_ext --inplace
step info required 10 "$PY" -m mnv3_kernels.info
step cuda_ops required 50 "${PYTEST[@]}" tests/test_cuda_ops.py -k "not emulated"
step cuda_model required 40 "${PYTEST[@]}" tests/test_cuda_model.py tests/test_cuda_plan.py -k "not emulated"
if command -v compute-sanitizer >/dev/null 2>&1 || [ $DRY = 1 ]; then
  step memcheck sanitizer 40 "${SANITIZE[@]}" --tool memcheck "$PY" benchmarks/sanitize_kernels.py
  step racecheck sanitizer 30 "${SANITIZE[@]}" --tool racecheck "$PY" benchmarks/sanitize_kernels.py
  step synccheck sanitizer 30 "${SANITIZE[@]}" --tool synccheck "$PY" benchmarks/sanitize_kernels.py
else
  printf '%-11s %-30s %6s %6s\n' sanitizer "not supported (no compute-sanitizer)" 0 0 >>"$SUMMARY"
fi
bench_step bench required 80 "${BENCH_ARGS[@]}" --batch 1 256 --dtype fp16 \
  --variants eager eager_cl compile fused-native fused-native-graph fused-native-frozen
for f in results.json speedup.png; do
  [ -f "$LOGS/bench/$f" ] && cp "$LOGS/bench/$f" "$OUT/$f"
done
step triton optional 0 "${PYTEST[@]}" tests/test_triton.py
bench_step bench_more optional 0 "${BENCH_ARGS[@]}" --batch 1 8 64 256 --dtype fp32 fp16 bf16

{
  echo
  echo "total wall: $(($(date +%s) - START)) s (budget ${TOTAL_BUDGET} s)"
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo "RESULT: FAILED: ${FAILED[*]} (logs in logs.tar.gz)"
  else
    echo "RESULT: every step that ran passed"
  fi
  echo
  echo "bench (median ms per forward):"
  sed -n '/^model/,$p' "$LOGS/bench.log" 2>/dev/null
} >>"$SUMMARY"
pack_logs
cat "$SUMMARY"
[ ${#FAILED[@]} -eq 0 ]
