"""Helpers for checking a fused model against its unfused twin without
pretrained weights (used by the tests and the benchmarks)."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Random affine params and running stats (where tracked) in every BatchNorm, so folding is not a no-op."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                if m.running_mean is not None and m.running_var is not None:
                    m.running_mean.normal_(0.0, 0.1, generator=generator)
                    m.running_var.uniform_(0.5, 2.0, generator=generator)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=generator)
                    m.bias.normal_(0.0, 0.1, generator=generator)


def randomize_classifier(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """torchvision initializes Linear layers with std 0.01, which makes logits ~1e-2;
    a 1/sqrt(fan_in) init gives logits large enough that errors mean something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 1.0 / m.in_features**0.5, generator=generator)
                m.bias.normal_(0.0, 0.1, generator=generator)
