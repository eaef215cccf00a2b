"""Loads the compiled extensions and remembers why one is missing.

Importing an extension module runs its static registrations: the CPU or CUDA
implementations of the ops that ops.py defines.  A missing or broken build is
not an error here: backends.py falls back and `python -m mnv3_kernels.info`
says why.  One exception: MNV3_CPU_ISA asking for a vector ISA level this CPU
(or build) cannot run raises at load, with what the CPU lacks.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from dataclasses import dataclass

_HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    reason: str


def build_info() -> dict:
    """What setup.py recorded: the torch, CUDA and archs the extensions were built with."""
    path = os.path.join(_HERE, "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _load(module: str, what: str, not_built_reason: str) -> ExtensionStatus:
    import torch

    if module == "_C_cuda" and torch.version.cuda is None:  # nothing to load it for: no warning
        return ExtensionStatus(False, f"torch {torch.__version__} is a CPU-only build (CUDA kernels need a CUDA torch)")
    try:
        importlib.import_module(f"mnv3_kernels.{module}")
    except ModuleNotFoundError as e:
        if e.name != f"mnv3_kernels.{module}":
            raise
        return ExtensionStatus(False, not_built_reason)
    except (ImportError, OSError) as e:  # built, but does not load under this torch
        built_with = build_info().get("torch", "an unknown torch")
        msg = (
            f"mnv3_kernels: the {what} extension was built with torch {built_with} and does not load "
            f"under torch {torch.__version__}: {e}. Rebuild with `pip install --no-build-isolation .`; "
            "until then other backends are used."
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return ExtensionStatus(False, msg)
    return ExtensionStatus(True, "loaded")


def cpu_isa() -> dict | None:
    """The vector ISA level the CPU kernels run, as the CPU extension chose it
    (csrc/cpu/cpu_isa.cpp): {"level", "lanes", "reason", "built", "supported",
    "features"}; None when the CPU extension is not loaded.  Raises
    RuntimeError when MNV3_CPU_ISA asks for a level this CPU or build lacks."""
    try:
        from . import _C
    except ImportError:
        return None
    if not hasattr(_C, "cpu_isa"):  # a module built before the ISA levels existed
        return None
    return _C.cpu_isa()


def cpu_model() -> str:
    """The CPU's model name, with its family and model numbers where /proc/cpuinfo
    has them ("AMD EPYC" is the whole name on some VMs: Zen 3 is family 25 model 1,
    Zen 4 family 25 model 17)."""
    import platform

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def load_extensions() -> dict[str, ExtensionStatus]:
    info = build_info()
    # A source checkout imported without an in-place build has the build record
    # (setup.py writes it there) but not the modules: say where we looked.
    missing = (f"mnv3_kernels._C{{}} is missing from {_HERE} (a source tree that was not built in place? "
               "use `pip install --no-build-isolation -e .`, or run from outside the checkout)")
    status = {"cpu": _load("_C", "CPU", missing.format("") if info else
                           "the CPU extension was not built (pip install . builds it)")}
    if status["cpu"].loaded:
        cpu_isa()  # a bad MNV3_CPU_ISA fails here, at import, not at the first op
    if info.get("cuda_built"):
        cuda_reason = missing.format("_cuda")
    else:
        cuda_reason = "not built: " + (info.get("cuda_reason") or "no build record")
    status["cuda"] = _load("_C_cuda", "CUDA", cuda_reason)
    return status
