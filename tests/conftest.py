"""Shared fixtures and input builders of the test suite."""

from __future__ import annotations

import pytest
import torch

from mnv3_kernels.testing import randomize_batchnorm, randomize_classifier  # noqa: F401  (re-exported)
from op_cases import to_layout  # noqa: F401  (re-exported)

LAYOUTS = ("nchw", "nhwc", "view")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
