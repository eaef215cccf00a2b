"""Shared fixtures and input builders of the test suite."""

from __future__ import annotations

import pytest
import torch

from mnv3_kernels.testing import randomize_batchnorm, randomize_classifier  # noqa: F401  (re-exported)

LAYOUTS = ("nchw", "nhwc", "view")


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x in NCHW-contiguous, channels-last, or as a non-contiguous view (a crop of a padded tensor)."""
    if layout == "nchw":
        return x.contiguous()
    if layout == "nhwc":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "view":
        n, c, h, w = x.shape
        big = torch.zeros((n, c + 2, h + 2, w + 3), dtype=x.dtype, device=x.device)
        big[:, 1 : c + 1, 1 : h + 1, 2 : w + 2] = x
        view = big[:, 1 : c + 1, 1 : h + 1, 2 : w + 2]
        return view
    raise ValueError(layout)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
