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


def mnv3_op_calls(fn, *args) -> Counter:
    """Counter of the mnv3 ops fn(*args) dispatches (by op name without 'mnv3::'), counted
    at the dispatcher, so every path counts (the Python API, the CPU fast plan, compiled code)."""
    with torch.profiler.profile() as prof:
        fn(*args)
    return Counter(e.name.split("::", 1)[1] for e in prof.events() if e.name.startswith("mnv3::"))
