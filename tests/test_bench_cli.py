"""The benchmark CLI (`python -m mnv3_kernels.bench`) on a small CPU case: variants
timed in rounds and merged, speedups against eager from the same run, no
variant's set-up changing the model the eager variant runs, and the models of
--models (mnv3_kernels/zoo.py) beyond MobileNetV3."""

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
from mnv3_kernels import bench, cpu_conv, zoo


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
    tv = bench._model("small", 0)
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
    real = bench._model
    calls = []

    def model_then_die(name, seed):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second case never finishes, like a killed run
        return real(name, seed)

    monkeypatch.setattr(bench, "_model", model_then_die)
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


# ------------------------------------------------------------------ --models: the zoo
def _rows(tmp_path) -> dict:
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    return {(r["model"], r["batch"], r["variant"]): r for r in results}


def test_bench_models_are_the_zoo_and_an_unknown_one_is_refused_before_any_work(tmp_path, capsys):
    assert bench._parser().parse_args(["--models", *zoo.MODELS]).models == list(zoo.MODELS)
    assert bench._parser().parse_args([]).models == ["large", "small"]
    code, err = _main_exit(["--models", "mobilenet_v2", "nosuch", "--out", str(tmp_path)], capsys)
    assert code == 2 and "argument --models: invalid choice: 'nosuch'" in err
    assert "check ..." not in err and not (tmp_path / "results.json").exists()
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name, entry in zoo.MODELS.items():
        assert f"{name} {' '.join(entry.description.split())}" in out


def test_bench_runs_a_zoo_model_and_records_its_name(tmp_path, capsys):
    variants = ["eager"] + (["fused-native"] if cpu_conv.native_available() else [])
    bench.main(["--device", "cpu", "--models", "mobilenet_v2", "--batch", "1", "--size", "32", "--variants", *variants,
                "--min-run-time", "0.02", "--rounds", "1", "--out", str(tmp_path)])
    rows = _rows(tmp_path)
    assert sorted(rows) == sorted(("mobilenet_v2", 1, v) for v in variants)
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows.values()), rows
    if "fused-native" in variants:  # the table says what fuse() did: 17 inverted residuals, no SE
        assert rows["mobilenet_v2", 1, "fused-native"]["notes"] == ["fused 17 dwconv + 0 SE blocks"]
    assert re.search(r"^mobilenet_v2 +1 fp32 +eager ", capsys.readouterr().out, re.M)


def test_output_tensor_is_the_segmentation_models_out_map(tmp_path):
    model = zoo.build("lraspp", 0)
    x = torch.randn(1, 3, 32, 48)
    with torch.inference_mode():
        out = model(x)
        assert isinstance(out, dict) and zoo.output_tensor(out) is out["out"]
        assert zoo.output_tensor(out).shape == (1, 21, 32, 48)
        assert zoo.output_tensor(out["out"]) is out["out"]
        # what ONNX Runtime exports: the "out" map, not the dict
        assert torch.equal(bench._TensorOutput(model)(x), out["out"])
    assert not bench._TensorOutput(model).training
    with pytest.raises(TypeError, match=r"got dict with keys \['aux'\]"):
        zoo.output_tensor({"aux": out["out"]})
    # the bench compares and times lraspp on that map (a dict out of every variant)
    variants = ["eager", "eager_cl"] + (["fused-native"] if cpu_conv.native_available() else [])
    bench.main(["--device", "cpu", "--models", "lraspp", "--batch", "1", "--size", "32", "--variants", *variants,
                "--min-run-time", "0.02", "--rounds", "1", "--out", str(tmp_path)])
    rows = _rows(tmp_path)
    assert all(r["status"] == "ok" and r["max_abs_diff"] is not None for r in rows.values()), rows


def test_the_same_seed_builds_the_same_model():
    a, b, c = zoo.build("small", 0), zoo.build("small", 0), zoo.build("small", 1)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.features[0][0].weight, c.features[0][0].weight)
    assert not a.training and all(p.dtype == torch.float32 for p in a.parameters())


def test_bench_seed_model_at_batch_1_is_a_row_with_the_reason_not_a_crash(tmp_path, capsys):
    """The seed's head squeezes the batch dimension away at batch 1, so eager itself
    fails: every variant of that case says why in one line, and the run goes on."""
    variants = ["eager", "eager_cl"] + (["fused-native", "fused-native-frozen"] if cpu_conv.native_available() else [])
    bench.main(["--device", "cpu", "--models", "seed_large", "--batch", "1", "2", "--size", "32", "--variants",
                *variants, "--min-run-time", "0.02", "--rounds", "1", "--out", str(tmp_path)])
    rows = _rows(tmp_path)
    for v in variants:
        r = rows["seed_large", 1, v]
        assert r["status"] == ("error" if v == "eager" else "unavailable") and r["median_ms"] is None, r
        assert len(r["notes"]) == 1 and r["notes"][0].startswith("eager fails: IndexError: Dimension out of range")
    assert rows["seed_large", 2, "eager"]["status"] == "ok" and rows["seed_large", 2, "eager_cl"]["status"] == "ok"
    table = capsys.readouterr().out
    assert re.search(r"^seed_large +1 fp32 +eager +- .* error: eager fails: IndexError", table, re.M)


def test_bench_model_without_its_package_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    bench.main(["--device", "cpu", "--models", "timm_small", "small", "--batch", "1", "--size", "32", "--variants",
                "eager", "--min-run-time", "0.02", "--rounds", "1", "--out", str(tmp_path)])
    rows = _rows(tmp_path)
    assert rows["timm_small", 1, "eager"]["status"] == "unavailable"
    assert rows["timm_small", 1, "eager"]["notes"] == ["timm is not installed (pip install timm)"]
    assert rows["small", 1, "eager"]["status"] == "ok"


@pytest.mark.skipif(not cpu_conv.native_available(), reason="the CPU extension is not built")
def test_bench_frozen_variant_freeze_refuses_is_unavailable_with_its_message(tmp_path, monkeypatch):
    """fused-native-frozen is mk.freeze(mk.fuse(model)); a model freeze() does not
    take is a row with freeze's message (its first line), not a failed run."""
    seen = []

    def refuse(model):
        seen.append(model)
        raise TypeError("freeze(model): not this one\nsecond line")

    monkeypatch.setattr(bench.mk, "freeze", refuse)
    bench.main(["--device", "cpu", "--models", "mobilenet_v2", "--batch", "1", "--size", "32", "--variants", "eager",
                "fused-native-frozen", "--min-run-time", "0.02", "--rounds", "1", "--out", str(tmp_path)])
    r = _rows(tmp_path)["mobilenet_v2", 1, "fused-native-frozen"]
    assert r["status"] == "unavailable" and r["notes"] == ["TypeError: freeze(model): not this one"], r
    assert len(seen) == 1 and hasattr(seen[0], "mnv3_fuse_report")  # freeze got the fused model


@pytest.mark.parametrize("fused", [False, True], ids=["model", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_the_cuda_plan_folds_in_fp32_and_runs_in_the_models_dtype(dtype, fused):
    """The plan of freeze()'s CUDA model (freeze.cuda_plan; the bench's fused-native-frozen on
    CUDA freezes mk.fuse(model)) off the GPU: its segments then run the reference
    interpreter, so this checks the folding on an fp32 copy and the conversion back
    (LR-ASPP: plan weights and the modules left to the model's code)."""
    import mnv3_kernels as mk
    from mnv3_kernels.freeze import cuda_plan
    from mnv3_kernels.testing import calibrate_batchnorm
    from tolerances import assert_lowp_close, assert_model_close

    model = zoo.build("lraspp", seed=0)
    calibrate_batchnorm(model, torch.randn(2, 3, 64, 64))
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = zoo.output_tensor(model(x))
        low = model.to(dtype)
        plan = cuda_plan(mk.fuse(low) if fused else low)
        assert len(plan.segments) == 2 and all(t.dtype == dtype for seg in plan.segments for t in seg.tensors)
        out = zoo.output_tensor(plan.graph_module(x.to(dtype)))
        own = zoo.output_tensor(low(x.to(dtype)))
    assert out.dtype == dtype
    if dtype == torch.float32:
        assert_model_close(out, expected)
    else:
        assert_lowp_close(out, expected, own, dtype)
