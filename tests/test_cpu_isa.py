"""The CPU kernels' vector ISA levels (csrc/cpu/cpu_isa.cpp): the level chosen and
why, MNV3_CPU_ISA forcing one, clear errors for a level the CPU lacks, and the CPU
test files passing at every level this machine runs (each in a pytest process of
its own: the level is chosen once, when the CPU module loads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnv3_kernels import backends
from mnv3_kernels._extension import build_info, cpu_isa

pytestmark = pytest.mark.skipif(not backends.EXTENSIONS["cpu"].loaded, reason="the CPU extension is not built")

LEVELS = ("avx512", "avx2", "baseline")
LANES = {"avx512": 16, "avx2": 8, "baseline": 4}  # fp32 lanes of each level's vectors
TESTS = Path(__file__).resolve().parent
# The CPU op sweeps, the fast plan and freeze, and the models against torchvision / eager.
LEVEL_FILES = ("test_ops_cpu.py", "test_pointwise_cpu.py", "test_dwconv_tiles_cpu.py", "test_cpu_conv.py",
               "test_fast_plan.py", "test_freeze.py", "test_model.py", "test_fuse_generic.py", "test_bad_input.py",
               "test_run_plan_executor.py", "test_plan.py")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (the level is read once, at load) with env added."""
    full = {k: v for k, v in os.environ.items() if k not in ("MNV3_CPU_ISA", "MNV3_TEST_HIDE_CPU_FEATURES")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


_PRINT_LEVEL = "from mnv3_kernels._extension import cpu_isa; i = cpu_isa(); print(i['level'], i['lanes'])"


def test_the_best_supported_level_is_the_default():
    r = _python(_PRINT_LEVEL)
    assert r.returncode == 0, r.stderr
    isa = cpu_isa()
    level = isa["supported"][0]
    assert r.stdout.split() == [level, str(LANES[level])]
    assert set(isa["supported"]) <= set(isa["built"]) and "baseline" in isa["supported"]
    assert isa["built"] == build_info().get("cpu_levels", isa["built"])


@pytest.mark.parametrize("level", LEVELS)
def test_mnv3_cpu_isa_forces_a_level(level):
    isa = cpu_isa()
    if level not in isa["built"]:
        pytest.skip(f"this build has no {level} kernels (built: {', '.join(isa['built'])})")
    r = _python(_PRINT_LEVEL + "; print(i['reason'])", MNV3_CPU_ISA=level.upper())
    if level not in isa["supported"]:
        assert r.returncode != 0 and f"MNV3_CPU_ISA={level} asks for more than this CPU has" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:2] == [level, str(LANES[level])]
    assert f"forced by MNV3_CPU_ISA={level}" in r.stdout


def test_an_unknown_level_is_refused_at_import():
    r = _python("import mnv3_kernels", MNV3_CPU_ISA="avx9")
    assert r.returncode != 0
    assert "MNV3_CPU_ISA must be one of avx512, avx2, baseline or auto; got 'avx9'" in r.stderr


def test_a_level_the_cpu_lacks_is_refused_naming_what_it_lacks():
    if "avx512" not in cpu_isa()["built"]:
        pytest.skip("not an x86-64 build: one level only")
    r = _python("import mnv3_kernels", MNV3_CPU_ISA="avx512", MNV3_TEST_HIDE_CPU_FEATURES="avx512f,avx512bw")
    assert r.returncode != 0
    assert "MNV3_CPU_ISA=avx512 asks for more than this CPU has: it lacks avx512f, avx512bw" in r.stderr, r.stderr
    # Without the request, the same CPU gets the best level it has.
    r = _python(_PRINT_LEVEL, MNV3_TEST_HIDE_CPU_FEATURES="avx512f")
    assert r.returncode == 0, r.stderr
    expected = "avx2" if "avx2" in cpu_isa()["supported"] else "baseline"
    assert r.stdout.split()[0] == expected
    r = _python(_PRINT_LEVEL, MNV3_TEST_HIDE_CPU_FEATURES="fma")
    assert r.returncode == 0 and r.stdout.split()[0] == "baseline", r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
def test_cpu_test_files_pass_at_level(level):
    """Every level this CPU runs passes the CPU test files; a level it cannot run is a skip
    that names what it lacks, never a pass."""
    isa = cpu_isa()
    if level not in isa["built"]:
        pytest.skip(f"this build has no {level} kernels (built: {', '.join(isa['built'])})")
    if level not in isa["supported"]:
        lacking = [f[:-1] for f in isa["features"].split() if f.endswith("-")]
        pytest.skip(f"this CPU cannot run the {level} kernels (it lacks {', '.join(lacking)})")
    if level == isa["level"]:
        pytest.skip(f"{level} is this session's own level: the CPU test files of this run cover it")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *[str(TESTS / f) for f in LEVEL_FILES]]
    env = dict(os.environ, MNV3_CPU_ISA=level)
    env.pop("MNV3_TEST_HIDE_CPU_FEATURES", None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=1800)
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-60:])
    assert r.returncode == 0, f"the CPU test files fail with MNV3_CPU_ISA={level}:\n{tail}"
    assert " passed" in tail, tail
