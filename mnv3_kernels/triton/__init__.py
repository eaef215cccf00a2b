"""Triton implementations of the mnv3 ops (selected by backends.py).

The ops mnv3::dwconv_bias_act_triton and mnv3::se_excite_scale_triton have the
schemas of mnv3::dwconv_bias_act / mnv3::se_excite_scale and are registered with
torch.library.triton_op, so torch.compile traces into the kernels.

Everything here is lazy: importing this package does not import triton, so
mnv3_kernels imports without it; availability() says why the backend is off.
They run on CUDA tensors, and on CPU tensors only in Triton's interpreter,
which TRITON_INTERPRET=1 selects when it is set before the kernels are
defined (in practice: before triton is imported).  Tests:

    TRITON_INTERPRET=1 python -m pytest -q tests/test_triton.py
"""

from __future__ import annotations

import os
import sys

import torch

_TUNING_MODULE = "mnv3_kernels.triton.tuning"
_registered = False


def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as e:  # not installed, or broken
        return f"triton does not import ({e})"
    return None


def _kernels_interpreted() -> bool | None:
    """Whether the kernels of this process were defined for the interpreter
    (None while they are not defined yet)."""
    tuning = sys.modules.get(_TUNING_MODULE)
    return None if tuning is None else tuning.INTERPRET


def availability(device_type: str) -> tuple[bool, str]:
    """(available, reason) of the Triton backend for tensors of `device_type`."""
    error = _triton_import_error()
    if error is not None:
        return False, error
    interpret_env = os.environ.get("TRITON_INTERPRET") == "1"
    interpreted = _kernels_interpreted()
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "triton imports but torch.cuda.is_available() is False"
        if interpreted or (interpreted is None and interpret_env):
            return True, "Triton interpreter on CUDA tensors (TRITON_INTERPRET=1): correct but slow"
        return True, "Triton kernels on CUDA"
    if device_type == "cpu":
        if interpreted is False:
            return False, (
                "the Triton kernels were defined without TRITON_INTERPRET=1 in this process, so they "
                "cannot run on CPU tensors; set TRITON_INTERPRET=1 before triton is imported"
            )
        if not interpret_env:
            return False, (
                "Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before triton "
                "is imported (slow; meant for tests)"
            )
        return True, "Triton interpreter (TRITON_INTERPRET=1): correct but slow, meant for tests"
    return False, f"no Triton kernels for {device_type} tensors"


def register() -> None:
    """Defines the kernels and registers the two triton_ops (imports triton).
    Runs on first use; call it before torch.compile traces a first call."""
    global _registered
    if not _registered:
        from . import dwconv_bias_act_triton, se_excite_scale_triton  # noqa: F401

        _registered = True


def _op(name: str):
    register()  # a flag test once registered, so torch.compile traces through it
    return getattr(torch.ops.mnv3, f"{name}_triton").default


def dwconv_bias_act(x, weight, bias, stride, padding, dilation, activation, with_mean):
    """mnv3::dwconv_bias_act on Triton: returns (y, mean), mean empty unless with_mean."""
    return _op("dwconv_bias_act")(x, weight, bias, stride, padding, dilation, activation, with_mean)


def se_excite_scale(x, pooled, w1, b1, w2, b2, gate):
    """mnv3::se_excite_scale on Triton: returns y = x * gate(...)."""
    return _op("se_excite_scale")(x, pooled, w1, b1, w2, b2, gate)
