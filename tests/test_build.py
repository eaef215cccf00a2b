"""The build did what setup.py promises, and the build record tells the truth."""

from __future__ import annotations

import torch

from mnv3_kernels import backends
from mnv3_kernels._extension import build_info


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


# The CUDA module's build checks (built wherever nvcc + a CUDA torch exist): tests/test_cuda_build.py.
