#!/usr/bin/env bash
# The emulated CUDA tests once more under AddressSanitizer: every global
# memory access of every CUDA kernel, run by the emulator over the CUDA op
# sweep, checked against the tensors' allocations (and dynamic shared memory
# against the exact size its launch asked for).
#
# Builds mnv3_kernels._C_emulated with -fsanitize=address outside the tree
# (build/emulated-asan/, reused by the next run), then runs the emulated tests
# in a python with libasan preloaded, the ASan module standing in for the
# tree's _C_emulated.  An ASan report aborts the run with the kernel's stack.
#
#   bash scripts/emulated_asan_check.sh [pytest args]   (from anywhere)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
CXX=${CXX:-g++}
if [ ! -e "$($CXX -print-file-name=libasan.so)" ]; then  # GCC's sanitizer runtimes: libgcc-N-dev
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y -q "libgcc-$($CXX -dumpversion | cut -d. -f1)-dev" >/dev/null || true
fi
LIBASAN=$($CXX -print-file-name=libasan.so)
# libstdc++ preloaded too: ASan intercepts __cxa_throw only if it is loaded when
# ASan starts (else the first C++ exception, e.g. in triton's import, aborts).
LIBSTDCXX=$($CXX -print-file-name=libstdc++.so)
for lib in "$LIBASAN" "$LIBSTDCXX"; do
  if [ ! -e "$lib" ]; then
    echo "$lib not found ($CXX -print-file-name)" >&2
    exit 1
  fi
done
BUILD=$ROOT/build/emulated-asan
mkdir -p "$BUILD"
echo "== building _C_emulated with AddressSanitizer into $BUILD"
MNV3_BUILD_EMULATED=1 MNV3_EMULATED_ASAN=1 "$PY" setup.py -q build_ext --build-lib "$BUILD/lib" \
  --build-temp "$BUILD/temp" >"$BUILD.log" 2>&1 || { cat "$BUILD.log"; exit 1; }
SO=$(ls "$BUILD"/lib/mnv3_kernels/_C_emulated*.so)
echo "== pytest (emulated tests) with $LIBASAN and $LIBSTDCXX preloaded, module $SO"
# detect_leaks=0: CPython and torch keep allocations alive until exit.
# log_path and pytest -s: pytest would capture the stderr of a test, which an abort loses; the
# reports go to files, printed below.
rm -f "$BUILD"/asan-report.*
set +e
LD_PRELOAD="$LIBASAN $LIBSTDCXX" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path="$BUILD/asan-report" \
  "$PY" - "$SO" "$@" <<'PYEOF'
import importlib.util
import sys

import torch  # noqa: F401  (loads libc10 and libtorch, which the module links)

so, args = sys.argv[1], sys.argv[2:]
spec = importlib.util.spec_from_file_location("mnv3_kernels._C_emulated", so)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["mnv3_kernels._C_emulated"] = module  # mnv3_kernels.emulated imports this one
assert module.asan(), f"{so} is not an AddressSanitizer build"

import pytest  # noqa: E402

sys.exit(pytest.main(["-q", "-s", "-p", "no:cacheprovider", "tests/test_cuda_ops.py", "tests/test_cuda_emulator.py",
                      "-k", "emulated or emulator"] + args))
PYEOF
rc=$?
set -e
if ls "$BUILD"/asan-report.* >/dev/null 2>&1; then
  echo "== AddressSanitizer reports:"
  cat "$BUILD"/asan-report.*
  exit 1
fi
exit $rc
