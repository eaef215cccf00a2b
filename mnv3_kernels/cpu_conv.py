"""The convolutions around the fused ops, on CPU: conv + bias + activation
(+ the residual add) as one oneDNN call on weights prepacked once.

MobileNetV3 spends most of its CPU time in the 1x1 expand / project convs.
Eager PyTorch runs each as a convolution that reorders its weights on every
call, then the activation and the residual add as separate passes over the
activation.  oneDNN's fused pointwise convolution (the op torch.compile's
freezing pass uses, torch.ops.mkldnn._convolution_pointwise) does all of it in
one call on a weight reordered once.  Used only for fp32, channels-last CPU
tensors in eager mode, with the native backend; everything else takes
F.conv2d.  If this torch lacks the ops, prepack() returns None and the
callers fall back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# op activation name -> (oneDNN unary attr, its scalars)
_ATTRS = {"identity": ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0]),
          "hardswish": ("hardswish", [])}
# The reorder picks a blocked weight format from an example input size; any
# input size runs on the packed weight (checked in tests/test_cpu_conv.py).
_EXAMPLE_HW = 56


def available() -> bool:
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_convolution_pointwise")
            and hasattr(mkldnn, "_reorder_convolution_weight"))


@dataclass(frozen=True)
class PackedConv:
    weight: torch.Tensor  # oneDNN-blocked (layout torch._mkldnn)
    bias: torch.Tensor
    stride: list
    padding: list
    dilation: list
    groups: int
    attr: str
    scalars: list


def prepack(weight: torch.Tensor, bias: torch.Tensor, stride, padding, dilation, groups: int,
            activation: str) -> PackedConv | None:
    """The packed conv, or None where the fused oneDNN path does not apply."""
    if (weight.device.type != "cpu" or weight.dtype != torch.float32 or activation not in _ATTRS
            or not available()):
        return None
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    example = [1, weight.shape[1] * groups, _EXAMPLE_HW, _EXAMPLE_HW]
    try:
        packed = torch.ops.mkldnn._reorder_convolution_weight(weight.contiguous(), padding, stride, dilation,
                                                              groups, example)
    except RuntimeError:  # an op signature this torch does not have: use F.conv2d
        return None
    attr, scalars = _ATTRS[activation]
    return PackedConv(packed, bias.contiguous(), stride, padding, dilation, groups, attr, scalars)


def run(p: PackedConv, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """act(conv(x) + bias) or, with residual (only for activation 'identity'), conv(x) + bias + residual."""
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, p.weight, p.bias, p.padding, p.stride, p.dilation,
                                                       p.groups, p.attr, p.scalars, "")
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, p.weight, p.bias, p.padding, p.stride,
                                                          p.dilation, p.groups, "add", None, None, [], None)
