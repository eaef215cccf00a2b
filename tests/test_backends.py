"""Backend choice: automatic, by MNV3_BACKEND, by the API; and what info reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tolerances import assert_model_close

import mnv3_kernels as mk
from mnv3_kernels import backends, reference
from mnv3_kernels.backends import Backend

native_cpu = pytest.mark.skipif(not backends.native_availability("cpu")[0], reason="CPU extension not built")


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    backends.set_backend(None)
    yield
    backends.set_backend(None)


@native_cpu
def test_auto_picks_native_on_cpu():
    assert backends.resolve("cpu") is Backend.NATIVE
    assert backends.implementation("dwconv_bias_act", torch.device("cpu")) is torch.ops.mnv3.dwconv_bias_act.default


def test_env_var_selects_reference(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.resolve("cpu") is Backend.REFERENCE
    assert backends.implementation("se_excite_scale", torch.device("cpu")) is reference.se_excite_scale


def test_api_overrides_env(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "native")
    mk.set_backend("reference")
    assert backends.resolve("cpu") is Backend.REFERENCE
    mk.set_backend(None)
    assert backends.requested_backend() is Backend.NATIVE


def test_use_backend_restores_the_previous_choice():
    mk.set_backend("reference")
    with mk.use_backend("auto"):
        assert backends.requested_backend() is Backend.AUTO
    assert backends.requested_backend() is Backend.REFERENCE


def test_bad_env_value_is_named(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=r"MNV3_BACKEND: backend must be one of"):
        backends.resolve("cpu")


def test_unavailable_explicit_backend_says_why(monkeypatch):
    monkeypatch.setattr(backends, "triton_availability", lambda device_type: (False, "triton is not installed"))
    with mk.use_backend("triton"):
        with pytest.raises(RuntimeError, match=r"backend 'triton' was requested .* unavailable for cpu tensors: "
                                                r"triton is not installed"):
            mk.dwconv_bias_act(torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3), padding=1)


def test_auto_falls_back_to_reference_with_a_warning(monkeypatch):
    monkeypatch.setattr(backends, "native_availability", lambda device_type: (False, "not built (test)"))
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"no fused kernels for cpu tensors \(native: not built \(test\)\)"):
        assert backends.resolve("cpu") is Backend.REFERENCE


@native_cpu
def test_backends_agree_on_the_model():
    model = mk.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        with mk.use_backend("native"):
            native = model(x)
        with mk.use_backend("reference"):
            ref = model(x)
    assert_model_close(native, ref)


def test_info_reports_build_and_backends(tmp_path):
    # The same mnv3_kernels as this process imported, whatever the working directory.
    env = {**os.environ, "PYTHONPATH": str(Path(mk.__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-m", "mnv3_kernels.info"], capture_output=True, text=True, check=True,
                         timeout=120, cwd=tmp_path, env=env).stdout
    assert "built with torch" in out or "no build record" in out
    from mnv3_kernels import emulated

    if "built with torch" in out:  # says whether the CUDA emulator's kernels were built, as they loaded here
        assert ("CUDA emulator: built" if emulated.available() else "CUDA emulator: not built") in out
    no_gpu = not torch.cuda.is_available()
    for device_type in ("cpu", "cuda"):
        for name in ("native", "triton", "reference"):
            ok, why = backends.availability(Backend(name), device_type)
            if ok and device_type == "cuda" and no_gpu and name != "reference":
                # kernels registered, nothing to run them on: never "available"
                assert f"{device_type:4s} {name:9s} {'built':11s} {why}; no GPU visible" in out
            else:
                assert f"{device_type:4s} {name:9s} {'available' if ok else 'unavailable':11s} {why}" in out
    assert f"-> cpu ops run on: {backends.resolve('cpu').value}" in out
    if no_gpu and backends.resolve("cuda") is not Backend.REFERENCE:
        assert f"-> cuda ops run on: {backends.resolve('cuda').value} (built; no GPU visible to run it)" in out
