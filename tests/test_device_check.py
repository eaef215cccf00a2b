"""benchmarks/device_check.sh's own logic, without a GPU (--dry-run: stand-in
commands, 1-second budgets, faults planted through MNV3_DRY_RUN_FAIL): the
steps and their order, the exit status, what the summary says, and at most 6
files in OUT (8 come back from the GPU machine)."""

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mnv3_kernels import emulated

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["build", "info", "cuda_ops", "cuda_model", "memcheck", "racecheck", "synccheck", "bench", "triton",
         "bench_more"]


def _dry_run(out: Path, faults: str = "") -> tuple[int, str]:
    env = dict(os.environ, MNV3_DRY_RUN_FAIL=faults, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--dry-run", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    summary = (out / "summary.txt").read_text()
    assert proc.stdout.endswith(summary), "the script's last output is the summary"
    return proc.returncode, summary


def _status(summary: str, step: str) -> str:
    m = re.search(rf"^{step} +(.+?) +\d+ +\d+$", summary, re.M)
    assert m, f"no summary line for {step}:\n{summary}"
    return m.group(1).strip()


def test_dry_run_all_steps_pass(tmp_path):
    rc, summary = _dry_run(tmp_path)
    assert rc == 0, summary
    lines = [line.split()[0] for line in summary.splitlines() if re.match(r"^\w+ +\S.* +\d+ +\d+$", line)]
    assert lines == STEPS, "every step, in the order of what it is worth"
    assert all(_status(summary, s) == "ok" for s in STEPS)
    assert "RESULT: every step that ran passed" in summary
    files = sorted(p.name for p in tmp_path.iterdir())
    plot = ["speedup.png"] if importlib.util.find_spec("matplotlib") else []  # the bench plots with matplotlib only
    assert files == sorted(["logs.tar.gz", "results.json", "summary.txt", *plot]) and len(files) <= 6
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        names = {os.path.basename(n) for n in tar.getnames()}
    assert {f"{s}.log" for s in STEPS} <= names and "results.json" in names  # bench_more's results


def test_dry_run_planted_faults(tmp_path):
    rc, summary = _dry_run(tmp_path, "cuda_ops=fail,memcheck=unsupported,racecheck=timeout,bench=fail")
    assert rc == 1, summary
    assert _status(summary, "cuda_ops").startswith("FAILED (rc 3)")
    assert "dry run: planted failure" in summary  # the failed step's last log lines
    assert _status(summary, "memcheck") == "not supported on this machine"
    assert _status(summary, "racecheck") == "TIMED OUT"
    assert _status(summary, "bench").startswith("FAILED")
    for later in ("cuda_model", "synccheck", "triton", "bench_more"):  # a failure stops nothing after it
        assert _status(summary, later) == "ok"
    assert "RESULT: FAILED: cuda_ops racecheck bench" in summary
    assert not (tmp_path / "results.json").exists(), "a failed bench leaves no results to copy"


def test_step_budgets_fit_seven_minutes():
    text = (ROOT / "benchmarks" / "device_check.sh").read_text()
    budgets = [int(b) for b in re.findall(r"^\s*(?:bench_)?step \w+ (?:required|sanitizer) (\d+)", text, re.M)]
    assert len(budgets) == 8 and sum(budgets) <= 420, budgets
    assert re.search(r"^TOTAL_BUDGET=420\b", text, re.M)


@pytest.mark.skipif(not emulated.available(), reason=f"the emulated CUDA kernels: {emulated.STATUS.reason}")
def test_sanitizer_workload_reaches_every_launch_branch():
    """The sanitizer steps run benchmarks/sanitize_kernels.py on the GPU; the same
    calls through the CUDA emulator must pass and reach every launch branch."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sanitize_kernels.py"), "--emulated"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every launch branch reached" in proc.stdout
