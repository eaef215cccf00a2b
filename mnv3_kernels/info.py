"""`python -m mnv3_kernels.info`: what was built, with what, and which backend
is available for each device, and why not."""

from __future__ import annotations

import os
import sys

import torch

from . import __version__, backends
from ._extension import build_info, cpu_isa, cpu_model


def report() -> str:
    info = build_info()
    lines = [f"mnv3_kernels {__version__}", ""]
    lines.append("build:")
    if not info:
        lines.append("  no build record (_build_info.json missing): the extensions were not built")
    else:
        lines.append(f"  built with torch {info.get('torch')} (stable ABI target {info.get('torch_target_version')}), "
                     f"python {info.get('python')}")
        if info.get("cpu_levels"):
            lines.append(f"  CPU kernels: vector ISA levels {', '.join(info['cpu_levels'])}")
        if info.get("cuda_built"):
            lines.append(f"  CUDA extension: CUDA {info.get('cuda')}, archs {info.get('cuda_arch_list')}")
        else:
            lines.append(f"  CUDA extension: not built ({info.get('cuda_reason')})")
        if info.get("emulated_built"):
            lines.append("  CUDA emulator: built (mnv3_kernels._C_emulated: the CUDA kernels on CPU tensors, "
                         "torch.ops.mnv3_emulated.* after `import mnv3_kernels.emulated`; for tests)")
        else:
            lines.append("  CUDA emulator: not built (MNV3_BUILD_EMULATED=1 at build time builds it)")
    lines.append("")
    lines.append("runtime:")
    lines.append(f"  torch {torch.__version__}, CUDA runtime {torch.version.cuda}, python {sys.version.split()[0]}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    lines.append(f"  GPU: {gpu}")
    lines.append(f"  CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads")
    isa = cpu_isa()
    if isa is None:
        lines.append("  CPU kernels' vector ISA: - (the CPU extension is not loaded)")
    else:
        lines.append(f"  CPU kernels' vector ISA: {isa['level']} ({isa['lanes']} fp32 lanes): {isa['reason']}")
        lines.append(f"    levels this CPU runs: {', '.join(isa['supported'])}; features (+ present, - absent): "
                     f"{isa['features'] or '-'}")
    lines.append(f"  requested backend: {backends.requested_backend().value} ({backends.ENV_VAR} / set_backend)")
    lines.append("")
    lines.append("backends:")
    # Kernels registered for CUDA with no GPU to run them: "built", not "available".
    no_gpu = not torch.cuda.is_available()
    for device_type in ("cpu", "cuda"):
        for backend in (backends.Backend.NATIVE, backends.Backend.TRITON, backends.Backend.REFERENCE):
            ok, why = backends.availability(backend, device_type)
            mark = "available" if ok else "unavailable"
            if ok and device_type == "cuda" and no_gpu and backend is not backends.Backend.REFERENCE:
                mark, why = "built", f"{why}; no GPU visible"
            lines.append(f"  {device_type:4s} {backend.value:9s} {mark:11s} {why}")
    for device_type in ("cpu", "cuda"):
        try:
            chosen = backends.resolve(device_type).value
            if device_type == "cuda" and no_gpu and chosen != backends.Backend.REFERENCE.value:
                chosen += " (built; no GPU visible to run it)"
        except RuntimeError as e:
            chosen = f"error: {e}"
        lines.append(f"  -> {device_type} ops run on: {chosen}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
