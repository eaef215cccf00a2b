#!/usr/bin/env bash
# The stable-ABI promise, checked: build a wheel against the torch installed
# here, install it into a fresh venv holding another torch (default 2.13.0, a
# CPU build), and run the CPU test files there from outside the checkout.
#
#   bash scripts/cross_version_check.sh [TORCH_VERSION]      (from the repository root)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${1:-2.13.0}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== building the wheel against torch $(python3 -c 'import torch; print(torch.__version__)')"
MNV3_SKIP_CUDA=${MNV3_SKIP_CUDA:-1} python3 -m pip wheel --no-build-isolation --no-deps -q -w "$WORK/wheel" "$ROOT"
echo "== venv with torch $VERSION"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "torch==$VERSION" pytest numpy
"$WORK/venv/bin/pip" install -q --no-deps "$WORK"/wheel/mnv3_kernels-*.whl
cd "$WORK"  # not the checkout: import the installed wheel, not the source tree
"$WORK/venv/bin/python" -m mnv3_kernels.info
"$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider \
  "$ROOT"/tests/test_ops_cpu.py "$ROOT"/tests/test_bad_input.py "$ROOT"/tests/test_dwconv_tiles_cpu.py \
  "$ROOT"/tests/test_folding.py "$ROOT"/tests/test_backends.py "$ROOT"/tests/test_cpu_conv.py "$ROOT"/tests/test_build.py \
  "$ROOT"/tests/test_pointwise_cpu.py
