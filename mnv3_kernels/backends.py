"""The one place that decides which implementation runs an mnv3 op.

Backends:
  native     the handwritten C++ kernel for the tensor's device: the CPU
             extension on CPU tensors, the CUDA extension on CUDA tensors
  triton     the Triton kernels (CUDA; CPU tensors only under TRITON_INTERPRET=1)
  reference  the pure-PyTorch reference (mnv3_kernels.reference), always available
  auto       (default) native if available, else triton on CUDA, else reference

Choose with the environment variable MNV3_BACKEND, or in code with
set_backend(...) / the use_backend(...) context manager (the API wins over the
environment).  A backend asked for explicitly that is unavailable raises and
says why; auto falls back with a one-time warning.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import warnings
from collections.abc import Callable, Iterator

import torch

from . import reference
from ._extension import load_extensions

OPS = ("dwconv_bias_act", "se_excite_scale")
ENV_VAR = "MNV3_BACKEND"


class Backend(str, enum.Enum):
    AUTO = "auto"
    NATIVE = "native"
    TRITON = "triton"
    REFERENCE = "reference"


EXTENSIONS = load_extensions()
_override: Backend | None = None
_warned: set[tuple[str, str]] = set()


def _parse(value) -> Backend:
    try:
        return Backend(value.value if isinstance(value, Backend) else str(value).strip().lower())
    except ValueError:
        names = ", ".join(b.value for b in Backend)
        raise ValueError(f"backend must be one of {names}; got {value!r}") from None


def set_backend(backend: str | Backend | None) -> None:
    """Force a backend for every op in this process (None: back to MNV3_BACKEND / auto)."""
    global _override
    _override = None if backend is None else _parse(backend)


@contextlib.contextmanager
def use_backend(backend: str | Backend) -> Iterator[None]:
    """Run the ops in the with-block on `backend`."""
    global _override
    previous = _override
    _override = _parse(backend)
    try:
        yield
    finally:
        _override = previous


def requested_backend() -> Backend:
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR, "")
    if not env:
        return Backend.AUTO
    try:
        return _parse(env)
    except ValueError as e:
        raise ValueError(f"{ENV_VAR}: {e}") from None


def _device_type(device) -> str:
    return torch.device(device).type


@functools.lru_cache(maxsize=None)  # fixed once the extensions are loaded (at import)
def native_availability(device_type: str) -> tuple[bool, str]:
    """Whether the C++ kernels of every op are registered for this device type."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False, f"no handwritten kernels for {device_type} tensors"
    status = EXTENSIONS[device_type]
    if not status.loaded:
        return False, status.reason
    missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"mnv3::{op}", key)]
    if missing:
        return False, f"the {device_type} extension loaded but registers no {key} kernel for {missing}"
    return True, f"{device_type} extension loaded"


def triton_availability(device_type: str) -> tuple[bool, str]:
    from . import triton as triton_backend

    return triton_backend.availability(device_type)


def availability(backend: Backend, device_type: str) -> tuple[bool, str]:
    if backend is Backend.NATIVE:
        return native_availability(device_type)
    if backend is Backend.TRITON:
        return triton_availability(device_type)
    if backend is Backend.REFERENCE:
        return True, "pure PyTorch, always available"
    raise ValueError(f"availability of {backend} is not defined")


def resolve(device) -> Backend:
    """The backend that runs ops on tensors of `device` right now."""
    device_type = _device_type(device)
    wanted = requested_backend()
    if wanted is not Backend.AUTO:
        ok, why = availability(wanted, device_type)
        if not ok:
            raise RuntimeError(
                f"mnv3_kernels: backend '{wanted.value}' was requested ({ENV_VAR} or set_backend) "
                f"but is unavailable for {device_type} tensors: {why}"
            )
        return wanted
    chain = [Backend.NATIVE] + ([Backend.TRITON] if device_type == "cuda" else [])
    reasons = []
    for backend in chain:
        ok, why = availability(backend, device_type)
        if ok:
            return backend
        reasons.append(f"{backend.value}: {why}")
    _warn_once(
        device_type,
        f"mnv3_kernels: no fused kernels for {device_type} tensors ({'; '.join(reasons)}); "
        "using the pure-PyTorch reference",
    )
    return Backend.REFERENCE


def native_on_cpu() -> bool:
    """Whether resolve("cpu") is the native backend, without its device parsing:
    the MobileNetV3 fast plan's per-forward check.  Where MNV3_BACKEND is set it
    defers to resolve (which parses it, and raises for a bad value)."""
    wanted = _override
    if wanted is None:
        if os.environ.get(ENV_VAR):
            return resolve("cpu") is Backend.NATIVE
        wanted = Backend.AUTO
    return wanted in (Backend.AUTO, Backend.NATIVE) and native_availability("cpu")[0]


def cpu_fast_path(x: torch.Tensor) -> bool:
    """The one answer to "does x take the fp32 CPU fast path" (mnv3::run_plan and the
    CPU-only ops: pointwise_bias_act, pointwise_dwconv, conv_bias_act, se_gate): a
    non-empty float32 CPU tensor, in eager mode (torch.compile traces the ops one by
    one), outside CPU autocast, with the native backend selected for CPU."""
    return (x.dtype is torch.float32 and x.device.type == "cpu" and x.numel() > 0
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu") and native_on_cpu())


def _warn_once(device_type: str, message: str) -> None:
    if (device_type, message) not in _warned:
        _warned.add((device_type, message))
        warnings.warn(message, RuntimeWarning, stacklevel=4)


@torch.compiler.assume_constant_result
def _resolve_for_trace(device_type: str) -> str:
    # torch.compile runs this once while tracing and bakes the answer into the
    # graph (availability checks query the dispatcher, which Dynamo cannot trace).
    backend = resolve(device_type)
    if backend is Backend.TRITON:  # define the triton_ops now: Dynamo cannot trace the import
        from . import triton as triton_backend

        triton_backend.register()
    return backend.value


def implementation(op: str, device) -> Callable:
    """The callable that runs `op` (with the op schema's arguments) for `device`."""
    if torch.compiler.is_compiling():
        backend = Backend(_resolve_for_trace(device.type))
    else:
        backend = resolve(device)
    if backend is Backend.NATIVE:
        return getattr(torch.ops.mnv3, op).default
    if backend is Backend.TRITON:
        from . import triton as triton_backend

        return getattr(triton_backend, op)
    return getattr(reference, op)
