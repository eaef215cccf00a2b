"""The build did what setup.py promises, and the build record tells the truth."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from mnv3_kernels import backends
from mnv3_kernels._extension import build_info


def _nvcc_present() -> bool:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return shutil.which("nvcc") is not None or os.path.exists(os.path.join(home, "bin", "nvcc"))


def test_cpu_extension_is_built_and_registers_both_ops():
    assert backends.EXTENSIONS["cpu"].loaded, backends.EXTENSIONS["cpu"].reason
    for op in backends.OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mnv3::{op}", "CPU"), op


def test_build_record_matches_this_build():
    info = build_info()
    assert info, "mnv3_kernels/_build_info.json is missing: setup.py writes it at build time"
    assert info["torch_target_version"] == "2.10"
    assert info["torch"] and info["python"]
    if not info["cuda_built"]:
        assert not backends.EXTENSIONS["cuda"].loaded
        assert info["cuda_reason"]
    elif torch.version.cuda is not None:  # built for CUDA, and this torch can load it
        assert backends.EXTENSIONS["cuda"].loaded, backends.EXTENSIONS["cuda"].reason
        assert info["cuda_arch_list"]


@pytest.mark.skipif(os.environ.get("MNV3_SKIP_CUDA") == "1", reason="MNV3_SKIP_CUDA=1: CUDA build skipped on purpose")
@pytest.mark.skipif(torch.version.cuda is None, reason="torch is a CPU-only build: no CUDA module is expected")
@pytest.mark.skipif(not _nvcc_present(), reason="no nvcc: no CUDA module is expected")
def test_cuda_extension_built_when_nvcc_and_cuda_torch_exist():
    """With nvcc and a CUDA torch the CUDA module must be built (compiled even without a GPU) and load."""
    assert build_info().get("cuda_built"), build_info().get("cuda_reason")
    assert backends.EXTENSIONS["cuda"].loaded, backends.EXTENSIONS["cuda"].reason
    for op in backends.OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mnv3::{op}", "CUDA"), op
