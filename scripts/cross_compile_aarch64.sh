#!/usr/bin/env bash
# The CPU sources compile for aarch64: every csrc/cpu/*.cpp against the torch and
# Python headers installed here, and every kernel source (csrc/cpu/kernels/*.cpp)
# at the one level aarch64 builds (baseline: NEON, 4 fp32 lanes; level.h refuses
# anything else), with Debian's cross compiler (-c only: nothing is linked or run).
# Then checks that the kernels' multiply-adds are 4-lane NEON (fmla vN.4s).  Both
# see mnv3_generated.h, generated into the work folder as setup.py does
# (scripts/generate_headers.py).
#
#   bash scripts/cross_compile_aarch64.sh      (from anywhere; installs g++-aarch64-linux-gnu if missing)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CXX=${AARCH64_CXX:-aarch64-linux-gnu-g++}
OBJDUMP=${CXX%g++}objdump
if ! command -v "$CXX" >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y -q g++-aarch64-linux-gnu >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q g++-aarch64-linux-gnu >/dev/null; }
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
INCLUDES=$(python3 -c "import sysconfig, torch.utils.cpp_extension as c; print(' '.join(['-I' + p for p in c.include_paths()] + ['-I' + sysconfig.get_paths()['include']]))" 2>/dev/null)
python3 "$ROOT/scripts/generate_headers.py" "$WORK/generated" >/dev/null  # mnv3_generated.h
FLAGS=(-std=c++17 -O2 -fPIC -Wall -Werror -Wno-psabi -DTORCH_TARGET_VERSION=0x020a000000000000 -I"$WORK/generated")
cd "$ROOT"
for src in csrc/cpu/*.cpp; do
  echo "== $CXX -c $src"
  # shellcheck disable=SC2086
  "$CXX" "${FLAGS[@]}" $INCLUDES -DPy_LIMITED_API=0x030A0000 -c "$src" -o "$WORK/$(basename "$src" .cpp).o"
done
for src in csrc/cpu/kernels/*.cpp; do
  echo "== $CXX -c $src (MNV3_CPU_LEVEL_BASELINE)"
  "$CXX" "${FLAGS[@]}" -O3 -DMNV3_CPU_LEVEL_BASELINE -c "$src" -o "$WORK/kernel_$(basename "$src" .cpp).o"
done
fmla=$("$OBJDUMP" -d "$WORK"/kernel_gemm.o "$WORK"/kernel_dw_rows.o | grep -c 'fmla.*\.4s' || true)
echo "== aarch64 kernels: $fmla 4-lane NEON multiply-adds (fmla .4s) in the GEMM and depthwise tiles"
[ "$fmla" -gt 0 ]
