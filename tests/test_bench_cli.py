"""The benchmark CLI (`python -m mnv3_kernels.bench`) on a small CPU case: variants
timed in rounds and merged, speedups against eager from the same run, and no
variant's set-up changing the model the eager variant runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mnv3_kernels as mk
from mnv3_kernels import bench, cpu_conv


def test_bench_cli_times_every_variant_in_rounds(tmp_path, capsys):
    variants = ["eager", "eager_cl"] + (["fused-native", "fused-native-frozen"] if cpu_conv.native_available() else [])
    bench.main(["--device", "cpu", "--models", "small", "--batch", "1", "--size", "64", "--variants", *variants,
                "--min-run-time", "0.1", "--rounds", "2", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["args"]["rounds"] == 2
    rows = {r["variant"]: r for r in results["results"]}
    assert sorted(rows) == sorted(variants)
    for r in rows.values():
        assert r["status"] == "ok" and r["median_ms"] > 0 and r["iqr_ms"] >= 0, r
        assert r["speedup_vs_eager"] == pytest.approx(rows["eager"]["median_ms"] / r["median_ms"])
    assert rows["eager"]["speedup_vs_eager"] == 1.0
    err = capsys.readouterr().err
    assert "round 1/2" in err and "round 2/2" in err


def test_bench_variants_leave_the_eager_model_alone():
    """All of a case's variants exist at once, so building one (eager_cl converts its
    model to channels_last, in place for nn.Module.to) must not change the model
    that the eager variant times."""
    tv = bench._torchvision_model("small", 0)
    x = torch.randn(1, 3, 64, 64)
    before = {k: (v.clone(), v.stride()) for k, v in tv.state_dict().items()}
    run_cl = bench._runner("eager_cl", tv, torch.device("cpu"), x)
    with torch.inference_mode():
        assert torch.allclose(run_cl(x), tv(x), atol=1e-5)
    for k, v in tv.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1], k


def test_bench_writes_results_after_every_case(tmp_path, monkeypatch):
    """A run cut short (the device check's bench step has a timeout) keeps the
    cases it finished: results.json is written after each case."""
    real = bench._torchvision_model
    calls = []

    def model_then_die(arch, seed):
        calls.append(arch)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second case never finishes, like a killed run
        return real(arch, seed)

    monkeypatch.setattr(bench, "_torchvision_model", model_then_die)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--device", "cpu", "--models", "small", "--batch", "1", "2", "--size", "32", "--variants",
                    "eager", "--min-run-time", "0.02", "--rounds", "1", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["batch"], r["variant"], r["status"]) for r in results["results"]] == [(1, "eager", "ok")]
    assert not (tmp_path / "results.json.tmp").exists()


def test_bench_cli_refuses_zero_rounds():
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--rounds", "0"])


def test_bench_records_its_source_commit_and_the_load(tmp_path, monkeypatch):
    env = bench._environment(torch.device("cpu"))
    assert env["loadavg"] is None or (len(env["loadavg"]) == 3 and all(v >= 0 for v in env["loadavg"]))
    checkout = (Path(mk.__file__).resolve().parent.parent / ".git").exists() and shutil.which("git")
    if checkout:
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", env["source_commit"]), env["source_commit"]
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    # A package inside some other repository (e.g. a virtual environment in a
    # project's checkout) is not that repository's commit.
    repo = tmp_path / "project"
    (repo / "venv" / "mnv3_kernels").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
                    "--allow-empty", "-m", "a commit"], check=True)
    monkeypatch.setattr(bench.mk, "__file__", str(repo / "venv" / "mnv3_kernels" / "__init__.py"))
    assert bench._source_commit() is None


def test_bench_records_the_cpu_and_its_isa_level(capsys, tmp_path):
    env = bench._environment(torch.device("cpu"))
    assert env["cpu_model"] and env["device"] == env["cpu_model"]
    isa = env["cpu_isa"]
    if isa is None:
        pytest.skip("the CPU extension is not built")
    assert isa["level"] in ("avx512", "avx2", "baseline") and isa["lanes"] in (4, 8, 16) and isa["reason"]
    text = bench._isa_text(env)
    assert f"mnv3 CPU ISA {isa['level']} ({isa['lanes']} lanes" in text
    bench.main(["--device", "cpu", "--models", "small", "--batch", "1", "--size", "32", "--variants", "eager",
                "--min-run-time", "0.02", "--rounds", "1", "--out", str(tmp_path)])
    assert text in capsys.readouterr().out.splitlines()[0]
    assert json.loads((tmp_path / "results.json").read_text())["environment"]["cpu_isa"] == isa


# ------------------------------------------------------------------ refusals and help
def _main_exit(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    return e.value.code, capsys.readouterr().err


def test_bench_refuses_an_unknown_variant_before_any_work(tmp_path, capsys):
    code, err = _main_exit(["--variants", "eager", "nosuch", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert "invalid choice: 'nosuch'" in err and all(v in err for v in bench.VARIANTS)
    assert "round 1/" not in err and "check ..." not in err and not (tmp_path / "results.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device cuda is valid here")
def test_bench_refuses_cuda_without_a_gpu_in_one_line(capsys):
    code, err = _main_exit(["--device", "cuda"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("python -m mnv3_kernels.bench: error: --device cuda: no CUDA GPU")
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["--device", "tpu"], "--device 'tpu': expected cpu, cuda or cuda:N"),
    (["--batch", "0"], "--batch sizes must be at least 1"),
    (["--size", "8"], "--size must be at least 32"),
    (["--min-run-time", "0"], "--min-run-time must be positive"),
])
def test_bench_refuses_nonsense_arguments(argv, message, capsys):
    code, err = _main_exit(argv, capsys)
    assert code == 2 and message in err


def test_bench_help_names_the_program_every_variant_and_the_defaults(capsys):
    code, out = None, ""
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    code, out = e.value.code, capsys.readouterr().out
    assert code == 0 and out.startswith("usage: python -m mnv3_kernels.bench")
    for name, what in bench.VARIANTS.items():
        assert f"{name}  " in out and what.split("(")[0].strip() in " ".join(out.split())
    for option in ("--device", "--size", "--seed", "--out", "--force"):
        line = next(line for line in out.splitlines() if line.strip().startswith(option))
        assert len(line.split()) > 2, f"{option} has no help"
    assert "(default: 224)" in out and "(default: 5)" in out


def test_bench_never_overwrites_an_earlier_run_without_force(tmp_path, capsys, monkeypatch):
    args = ["--device", "cpu", "--models", "small", "--batch", "1", "--size", "32", "--variants", "eager",
            "--min-run-time", "0.02", "--rounds", "1"]
    bench.main(args + ["--out", str(tmp_path / "run")])
    code, err = _main_exit(args + ["--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "holds the results of an earlier run: pass --force" in err
    bench.main(args + ["--out", str(tmp_path / "run"), "--force"])
    monkeypatch.chdir(tmp_path)  # without --out: a new folder per run
    bench.main(args)
    bench.main(args)
    runs = sorted((tmp_path / "mnv3_bench_results").iterdir())
    assert len(runs) >= 1 and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d{6}Z-cpu-fp32", p.name) for p in runs)
    assert all((p / "results.json").exists() for p in runs)


def test_bench_reports_a_variant_it_cannot_run(tmp_path, capsys):
    """fp16 on CPU: ONNX Runtime and the frozen model are fp32-only; they are listed
    with the reason, not dropped."""
    bench.main(["--device", "cpu", "--models", "small", "--batch", "1", "--size", "32", "--dtype", "fp16",
                "--variants", "eager", "onnxruntime", "fused-native-frozen", "--min-run-time", "0.02",
                "--rounds", "1", "--out", str(tmp_path)])
    rows = {r["variant"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    assert rows["onnxruntime"]["status"] == "unavailable" and "fp32 only" in rows["onnxruntime"]["notes"][0]
    assert rows["fused-native-frozen"]["status"] == "unavailable"
    table = capsys.readouterr().out
    assert re.search(r"onnxruntime .* unavailable: ONNX Runtime is timed in fp32 only", table)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about a machine without a GPU")
def test_bench_on_cpu_prints_no_cuda_runtime_warning(tmp_path):
    """torch.utils.cpp_extension warns "No CUDA runtime is found, using CUDA_HOME=..."
    where the CUDA toolkit exists without a GPU; on a CPU run that is expected, not a
    misconfiguration, and the bench keeps it out of its output."""
    root = Path(mk.__file__).resolve().parent.parent
    env = dict(os.environ, CUDA_HOME=os.environ.get("CUDA_HOME", "/usr/local/cuda"), PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-m", "mnv3_kernels.bench", "--device", "cpu", "--models", "small",
                           "--batch", "1", "--size", "32", "--variants", "eager", "--min-run-time", "0.02",
                           "--rounds", "1", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "No CUDA runtime" not in proc.stderr + proc.stdout
