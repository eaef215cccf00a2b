"""The CUDA extension must be built wherever it can be: a CUDA toolkit plus a
CUDA build of torch.  Neither test needs a GPU."""

import os
import shutil

import pytest
import torch

import mnv3_kernels  # noqa: F401  (defines the ops, loads the extensions)
from mnv3_kernels import backends


def _nvcc():
    """The nvcc setup.py would use, or None."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return shutil.which("nvcc")


CAN_BUILD_CUDA = _nvcc() is not None and torch.version.cuda is not None
SKIPPED_ON_PURPOSE = os.environ.get("MNV3_SKIP_CUDA", "0").lower() in ("1", "true", "yes", "on")


@pytest.mark.skipif(SKIPPED_ON_PURPOSE, reason="MNV3_SKIP_CUDA=1: the CUDA extension is skipped on purpose")
@pytest.mark.skipif(not CAN_BUILD_CUDA, reason="no nvcc or torch is not a CUDA build: nothing to build")
def test_cuda_extension_loaded_where_buildable():
    status = backends.EXTENSIONS["cuda"]
    assert status.loaded, (
        f"nvcc ({_nvcc()}) and CUDA torch {torch.version.cuda} are present but the CUDA extension "
        f"did not load: {status.reason}"
    )


@pytest.mark.skipif(SKIPPED_ON_PURPOSE, reason="MNV3_SKIP_CUDA=1: the CUDA extension is skipped on purpose")
@pytest.mark.skipif(not CAN_BUILD_CUDA, reason="no nvcc or torch is not a CUDA build: nothing to build")
@pytest.mark.parametrize("op", backends.OPS)
def test_cuda_kernels_registered(op):
    if not backends.EXTENSIONS["cuda"].loaded:
        pytest.fail(f"the CUDA extension did not load: {backends.EXTENSIONS['cuda'].reason}")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mnv3::{op}", "CUDA")
