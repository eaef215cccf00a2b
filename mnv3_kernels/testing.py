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


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Sets every BatchNorm's running statistics to those of one train-mode forward
    of x (as if trained on x's distribution); affine parameters are kept.

    With torchvision's random init and made-up running statistics the activations
    shrink block after block and the logits barely depend on the input; calibrated
    statistics keep them O(1) through the depth, so a comparison of logits checks
    the input-dependent computation of every layer.  Other modes are restored."""
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    for m, training in modes:
        m.training = training
