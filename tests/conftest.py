"""Shared fixtures and input builders of the test suite."""

from __future__ import annotations

import pytest
import torch

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


def randomize_batchnorm(model: torch.nn.Module, generator: torch.Generator | None = None) -> None:
    """Random affine params and running stats in every BatchNorm, so folding is not a no-op."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.1, generator=generator)


def randomize_classifier(model: torch.nn.Module, generator: torch.Generator | None = None) -> None:
    """torchvision initializes Linear layers with std 0.01, which makes logits ~1e-2;
    a wider init gives logits of O(1), so absolute and relative errors both mean something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, 1.0 / m.in_features**0.5, generator=generator)
                m.bias.normal_(0.0, 0.1, generator=generator)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
