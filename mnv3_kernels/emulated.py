"""The handwritten CUDA kernels run by the CUDA emulator, on CPU tensors.

`MNV3_BUILD_EMULATED=1` at build time compiles csrc/cuda/*.cu a second time
as host C++ against csrc/cuda/emulation/ into mnv3_kernels._C_emulated.
Importing this module defines the namespace `mnv3_emulated` with the CUDA
ops' public schemas (ops.py owns them) and loads that module, whose kernels
then serve

    torch.ops.mnv3_emulated.dwconv_bias_act(x, ...)   (x a CPU tensor)
    torch.ops.mnv3_emulated.se_excite_scale(x, ...)
    torch.ops.mnv3_emulated.pointwise_bias_act(x, ...)
    torch.ops.mnv3_emulated.pointwise_dwconv(x, ...)
    torch.ops.mnv3_emulated.se_gate(pooled, ...)
    torch.ops.mnv3_emulated.conv_bias_act(x, ...)

exactly as torch.ops.mnv3.* on a GPU: the same kernels, launch configurations
and shared-memory layout, every thread of every block run by the emulator,
which also fails a launch on a divergent __syncthreads, a shuffle whose mask
names a lane that does not arrive, a misaligned vector access, dynamic shared
memory used past the launch's size, or grid / block dimensions over CUDA's
limits (csrc/cuda/emulation/cuda_emulation.h lists the checks).  For tests
and for debugging a kernel without a GPU; slow, never a fast path.
"""

from __future__ import annotations

import functools

import torch

from . import ops
from ._extension import _load, build_info

NAMESPACE = "mnv3_emulated"
# The CUDA ops (one entry per op csrc/cuda/ implements), with ops.py's schemas.
# The fake kernels of ops.py for the ops with a CPU and a CUDA kernel check the
# call against the kernel it reaches: here the CUDA one, on CPU tensors.
CUDA_OPS = {
    "dwconv_bias_act": (ops.DWCONV_SCHEMA, ops._dwconv_bias_act_fake),
    "se_excite_scale": (ops.SE_SCHEMA, ops._se_excite_scale_fake),
    "pointwise_bias_act": (ops.POINTWISE_SCHEMA, functools.partial(ops._pointwise_bias_act_fake, kernel="cuda")),
    "pointwise_dwconv": (ops.POINTWISE_DW_SCHEMA, functools.partial(ops._pointwise_dwconv_fake, kernel="cuda")),
    "se_gate": (ops.SE_GATE_SCHEMA, functools.partial(ops._se_gate_fake, kernel="cuda")),
    "conv_bias_act": (ops.CONV_SCHEMA, functools.partial(ops._conv_bias_act_fake, kernel="cuda")),
}

_lib = torch.library.Library(NAMESPACE, "DEF")  # noqa: TOR901 - kept alive for the process
for _name, (_schema, _fake) in CUDA_OPS.items():
    _lib.define(_name + _schema)
    torch.library.register_fake(f"{NAMESPACE}::{_name}", _fake, lib=_lib)


def _not_built_reason() -> str:
    info = build_info()
    if not info:
        return "no build record (the package was not built)"
    if info.get("emulated_built"):
        return "mnv3_kernels._C_emulated is missing although the build record says it was built"
    return "not built (set MNV3_BUILD_EMULATED=1 at build time)"


STATUS = _load("_C_emulated", "emulated CUDA", _not_built_reason())


def available() -> bool:
    """True when the emulated kernels are loaded (torch.ops.mnv3_emulated.* run)."""
    return STATUS.loaded


def module():
    """The loaded mnv3_kernels._C_emulated (launch_log, checker cases); raises if not built."""
    if not STATUS.loaded:
        raise RuntimeError(f"the emulated CUDA kernels are not available: {STATUS.reason}")
    from . import _C_emulated

    return _C_emulated
