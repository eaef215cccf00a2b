"""Build of mnv3_kernels: the CPU extension always, the CUDA extension when
nvcc and a CUDA build of torch exist (no GPU needed to build it).

Both extensions use only the LibTorch stable ABI (TORCH_TARGET_VERSION 2.10)
and the CPython limited API, so one build loads under every torch >= 2.10.

Environment switches:
  MNV3_SKIP_CUDA=1        never build the CUDA extension
  MNV3_FORCE_CUDA=1       fail the build instead of skipping CUDA when nvcc or a CUDA torch is missing
  CUDA_HOME               CUDA toolkit root (else found from nvcc on PATH, else /usr/local/cuda)
  TORCH_CUDA_ARCH_LIST    GPU archs to build for; default: the visible GPUs, or
                          DEFAULT_ARCH_LIST below when none is visible
  MAX_JOBS                parallel compile jobs (ninja)
  MNV3_DEBUG=1            -O0 -g builds
  MNV3_BUILD_EMULATED=1   also build mnv3_kernels._C_emulated: the CUDA kernels compiled as
                          host C++ and run by the CUDA emulator on CPU tensors (ops
                          mnv3_emulated::*; for tests and debugging without a GPU, no nvcc needed)
  MNV3_EMULATED_ASAN=1    build only _C_emulated, with AddressSanitizer (it then loads only
                          with libasan preloaded; for scripts/emulated_asan_check.sh, which
                          builds it outside the tree)

The CPU kernels (csrc/cpu/kernels/*.cpp) are compiled once per vector ISA
level of the target (CPU_LEVELS: AVX-512, AVX2 + FMA and the baseline on
x86-64; the baseline alone elsewhere, NEON on aarch64); the CPU module picks
one level's kernels at load time (csrc/cpu/cpu_isa.cpp, MNV3_CPU_ISA).
"""

import glob
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "mnv3_kernels"
# Ampere and Hopper; +PTX lets newer GPUs JIT the Hopper code.
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
# Oldest torch whose stable ABI the extensions use (2.10.0), as TORCH_TARGET_VERSION.
TORCH_TARGET_VERSION = "0x020a000000000000"


# The vector ISA levels the CPU kernels are built for, best first, with each
# level's compiler flags (the macro MNV3_CPU_LEVEL_<NAME> selects its constants
# in csrc/cpu/kernels/level.h, which also checks the flags).  x86-64-v4 is
# AVX-512 F/BW/CD/DQ/VL, x86-64-v3 AVX2 + FMA + BMI; the baseline is spelled
# out so that CFLAGS with -march=native cannot raise it.
X86_CPU_LEVELS = {
    "avx512": ["-march=x86-64-v4"],
    "avx2": ["-march=x86-64-v3"],
    "baseline": ["-march=x86-64"],
}
CPU_KERNEL_SOURCES = sorted(glob.glob(os.path.join("csrc", "cpu", "kernels", "*.cpp")))


def _write_generated_header():
    """Writes mnv3_generated.h (the enums and tables of mnv3_kernels/vocabulary.py and
    mnv3_kernels/plan/steps.py, scripts/generate_headers.py) into build/generated/,
    rewritten only when its text changes (no needless rebuild); returns (its folder,
    on every extension's include path; its path, relative as the other depends)."""
    spec = importlib.util.spec_from_file_location("_mnv3_generate_headers",
                                                  os.path.join(ROOT, "scripts", "generate_headers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # torch-free
    out_dir = os.path.join(ROOT, "build", "generated")
    return out_dir, os.path.relpath(module.write(out_dir), ROOT)


GENERATED_DIR, GENERATED_HEADER = _write_generated_header()
# The headers every source may include; a change to one (the generated header:
# when vocabulary.py or steps.py changed) rebuilds the extensions.
HEADERS = sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)
                 + glob.glob(os.path.join("csrc", "**", "*.cuh"), recursive=True)) + [GENERATED_HEADER]


def _cpu_levels():
    if platform.machine().lower() in ("x86_64", "amd64"):
        return X86_CPU_LEVELS
    return {"baseline": []}  # the target's own baseline vectors (aarch64: NEON)


def _env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _is_cuda_toolkit(root):
    return bool(root) and os.path.exists(os.path.join(root, "bin", "nvcc")) and os.path.exists(
        os.path.join(root, "include", "cuda_runtime.h"))


def _find_cuda_home():
    """CUDA_HOME, else the toolkit that holds the nvcc on PATH, else /usr/local/cuda.

    torch's own guess takes the parent of the nvcc on PATH; where that nvcc is a
    symlink or a wrapper script in /usr/local/bin it lands on /usr/local, which
    has no CUDA headers or libraries.  A candidate counts only if it holds
    bin/nvcc and include/cuda_runtime.h.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [os.path.dirname(os.path.dirname(p)) for p in (nvcc, os.path.realpath(nvcc))]
    candidates.append("/usr/local/cuda")
    return next((c for c in candidates if _is_cuda_toolkit(c)), None)


_cuda_home = _find_cuda_home()
if _cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import.
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _cuda_decision():
    """(build_cuda, reason). Decided from nvcc + torch.version.cuda, never from a visible GPU."""
    if _env_flag("MNV3_SKIP_CUDA"):
        return False, "MNV3_SKIP_CUDA=1 was set at build time"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    if not _is_cuda_toolkit(_cuda_home):
        where = f"CUDA_HOME={_cuda_home} has no bin/nvcc + include/cuda_runtime.h" if _cuda_home else "nvcc not found"
        return False, f"{where} (set CUDA_HOME to the CUDA toolkit or put its nvcc on PATH)"
    return True, f"built with nvcc from {_cuda_home}"


def _arch_list():
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():  # only chooses archs; never decides whether to build
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps) + "+PTX"
    return DEFAULT_ARCH_LIST


BUILD_INFO = {}


def _check_level_symbols(objects, level):
    """Fails the build if a kernel object of `level` defines a global symbol
    outside its level's names (namespace mnv3::cpu_<level>, table
    cpu_kernels_<level>): an inline function compiled for AVX-512 and merged
    by the linker with the baseline's copy would run AVX-512 code on every
    level.  Skipped (with a note) where nm is missing."""
    nm = shutil.which("nm")
    if nm is None:
        print("mnv3_kernels: nm not found: the per-level symbol check of the CPU kernels is skipped", file=sys.stderr)
        return
    allowed = (f"cpu_{level}", f"cpu_kernels_{level}")
    for obj in objects:
        out = subprocess.run([nm, "-g", "--defined-only", obj], capture_output=True, text=True, check=True).stdout
        shared = [line.split()[-1] for line in out.splitlines() if line.strip()
                  and not any(a in line.split()[-1] for a in allowed)]
        if shared:
            raise RuntimeError(f"{obj} ({level} kernels) defines symbols outside its level, which the linker would "
                               f"share between levels: {shared[:8]}; make them MNV3_HD (always inline) or move them "
                               "into the level's namespace")


class BuildExtWithRecord(BuildExtension):
    """build_ext that compiles the CPU kernels once per vector ISA level and
    writes the build record (_build_info.json) beside the extension modules it
    built: into the wheel for `pip install .`, into the source tree for
    in-place / editable builds.  Never into a tree it did not build for, so a
    wheel built from a checkout leaves the checkout's record alone."""

    def finalize_options(self):
        super().finalize_options()
        # pip's editable and wheel builds hand build_ext a new temporary folder each
        # time, so nothing was reused between the README's two commands (a second
        # full build).  Objects go to the checkout's build/ instead, where ninja
        # rebuilds only what changed; a build_temp inside the checkout (an explicit
        # --build-temp) is kept.
        here = os.path.dirname(os.path.abspath(__file__))
        if not os.path.abspath(self.build_temp).startswith(here + os.sep) and os.access(here, os.W_OK):
            tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
            self.build_temp = os.path.join(here, "build", f"temp.{tag}")

    def build_extension(self, ext):
        levels = getattr(ext, "mnv3_cpu_levels", None)
        if levels:
            objects = []
            for level, flags in levels.items():
                objs = self.compiler.compile(
                    CPU_KERNEL_SOURCES,
                    output_dir=os.path.join(self.build_temp, "cpu_levels", level),
                    macros=[(f"MNV3_CPU_LEVEL_{level.upper()}", None)],
                    include_dirs=[GENERATED_DIR],
                    debug=self.debug,
                    extra_postargs=ext.mnv3_kernel_cflags + flags,
                    depends=HEADERS,
                )
                _check_level_symbols(objs, level)
                objects += objs
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)

    def run(self):
        super().run()
        out_dir = os.path.dirname(self.get_ext_fullpath(f"{PACKAGE}._C"))
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "_build_info.json"), "w") as f:
            json.dump(BUILD_INFO, f, indent=2, sort_keys=True)
            f.write("\n")


def _emulated_extension(debug, common, asan):
    """mnv3_kernels._C_emulated: csrc/cuda/*.cu as host C++ for the CUDA emulator
    (the wrappers in csrc/cuda/emulation/ include them)."""
    sanitize = ["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else []
    opt = ["-O0", "-g"] if debug else ["-O1"]  # compile time over speed: it is a checker, not a fast path
    return CppExtension(
        f"{PACKAGE}._C_emulated",
        sorted(glob.glob(os.path.join("csrc", "cuda", "emulation", "*.cpp"))),
        include_dirs=[GENERATED_DIR],
        extra_compile_args={"cxx": opt + common + ["-fdiagnostics-color=always", "-Wno-psabi",
                                                   "-DMNV3_CUDA_EMULATION", "-Wno-unknown-pragmas", "-Wno-sign-compare"] + sanitize},
        extra_link_args=sanitize,
        depends=sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))) + HEADERS,
        py_limited_api=True,
    )


def get_extensions():
    debug = _env_flag("MNV3_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    common = ["-std=c++17", f"-DTORCH_TARGET_VERSION={TORCH_TARGET_VERSION}"]
    # -Wno-psabi: the CPU kernels' vector helpers (csrc/cpu/kernels/vec.h) are
    # always inlined, so GCC's note that passing vectors changes the ABI
    # across targets never applies.
    cxx = opt + common + ["-fdiagnostics-color=always", "-Wno-psabi"]

    if _env_flag("MNV3_EMULATED_ASAN"):
        BUILD_INFO.update({"torch": torch.__version__, "emulated_built": True, "emulated_asan": True})
        return [_emulated_extension(debug, common, asan=True)]

    levels = _cpu_levels()
    cpu = CppExtension(
        f"{PACKAGE}._C",
        sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))),
        include_dirs=[GENERATED_DIR],
        extra_compile_args={"cxx": cxx + (["-DMNV3_CPU_X86_LEVELS"] if "avx2" in levels else [])},
        depends=CPU_KERNEL_SOURCES + HEADERS,
        py_limited_api=True,
    )
    cpu.mnv3_cpu_levels = levels  # compiled by BuildExtWithRecord.build_extension
    cpu.mnv3_kernel_cflags = cxx
    extensions = [cpu]
    info = {
        "cpu_levels": list(levels),
        "torch": torch.__version__,
        "torch_target_version": "2.10",
        "python": sys.version.split()[0],
        "cuda_built": False,
        "cuda_reason": "",
        "cuda": None,
        "cuda_arch_list": None,
    }
    build_cuda, reason = _cuda_decision()
    if not build_cuda and _env_flag("MNV3_FORCE_CUDA"):
        raise RuntimeError(f"MNV3_FORCE_CUDA=1 but the CUDA extension cannot be built: {reason}")
    info["cuda_built"], info["cuda_reason"] = build_cuda, reason
    if build_cuda:
        arch_list = _arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        info["cuda"], info["cuda_arch_list"] = torch.version.cuda, arch_list
        # USE_CUDA exposes the CUDA entry points of the C shim (the current stream).
        nvcc = opt + common + ["-DUSE_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]
        extensions.append(
            CUDAExtension(
                f"{PACKAGE}._C_cuda",
                sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
                + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp"))),
                include_dirs=[GENERATED_DIR],
                extra_compile_args={"cxx": cxx + ["-DUSE_CUDA"], "nvcc": nvcc},
                depends=HEADERS,
                py_limited_api=True,
            )
        )
    print(f"mnv3_kernels: CUDA extension: {reason}", file=sys.stderr)
    info["emulated_built"] = _env_flag("MNV3_BUILD_EMULATED")
    if info["emulated_built"]:
        extensions.append(_emulated_extension(debug, common, asan=False))
    BUILD_INFO.update(info)
    return extensions


setup(
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtWithRecord.with_options(use_ninja=shutil.which("ninja") is not None)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
