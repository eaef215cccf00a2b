"""Shared fixtures and input builders of the test suite."""

from __future__ import annotations

import pytest
import torch

from collections import Counter

from mnv3_kernels.testing import calibrate_batchnorm, randomize_batchnorm, randomize_classifier  # noqa: F401
from op_cases import to_layout  # noqa: F401  (re-exported)

LAYOUTS = ("nchw", "nhwc", "view")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def no_tf32():
    """fp32 comparisons on a GPU mean fp32: TF32 convolutions and matmuls (cuDNN's default
    for convolutions) would dominate the error."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cpu_plan_marks() -> list:
    """pytestmark of the tests of MobileNetV3's CPU fast plan (and freeze, which runs it)."""
    from mnv3_kernels import backends

    return [pytest.mark.skipif(not backends.native_availability("cpu")[0], reason="the CPU extension is not built")]


def plan_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(x, calibration batch) of the fast-plan tests: a small odd-sized input, and the
    batch that calibrates BatchNorm statistics so the logits depend on every layer."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 72, 64, generator=gen), torch.randn(8, 3, 72, 64, generator=gen)


def mnv3_op_calls(fn, *args) -> Counter:
    """Counter of the mnv3 ops fn(*args) dispatches (by op name without 'mnv3::'), counted
    at the dispatcher, so every path counts (the Python API, the CPU fast plan, compiled code)."""
    with torch.profiler.profile() as prof:
        fn(*args)
    return Counter(e.name.split("::", 1)[1] for e in prof.events() if e.name.startswith("mnv3::"))


def disable_fast_plan(patch) -> None:
    """Makes MobileNetV3's forward take its module path, not the CPU fast plan, while
    `patch` (a pytest monkeypatch or its context) lasts: no plan is built, and a plan
    a model already cached is not run."""
    from mnv3_kernels.models.mobilenetv3 import MobileNetV3, _FastPlan

    patch.setattr(MobileNetV3, "_fast_plan", lambda self: None)
    patch.setattr(_FastPlan, "ready", lambda self, model, x: False)


def plan_program_ops(model) -> Counter:
    """Counter of the mnv3 ops that model's CPU fast plan program (mnv3::run_plan) runs:
    read from the program the C++ executor walks (decoded with the plan's step table),
    as mnv3_op_calls counts dispatches."""
    from mnv3_kernels.plan.interpreter import decode

    _, program = model._fast_plan().program
    return Counter(op for step, _ in decode(program)[3] for op in step.ops)
