"""Pure-PyTorch reference of every mnv3 op: the ground truth of the tests and
the fallback backend.

Each function computes what the eager PyTorch decomposition computes, in the
input's dtype, and returns outputs with the dtype and layout the op's schema
promises (see ops.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import empty_4d, unpack_pointwise_weight
from .vocabulary import ACTIVATIONS, GATES

ACTIVATION_FNS = {
    "identity": lambda t: t,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
}
GATE_FNS = {"hardsigmoid": F.hardsigmoid, "sigmoid": torch.sigmoid}
assert tuple(ACTIVATION_FNS) == ACTIVATIONS and tuple(GATE_FNS) == GATES  # vocabulary.py owns the names


def _as_layout_of(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # Exactly the strides of the other backends, size-1 dimensions included
    # (Tensor.contiguous would keep y's strides when they are already valid).
    return empty_4d(x, y.shape).copy_(y)


def dwconv_bias_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    activation: str,
    with_mean: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[1])
    y = _as_layout_of(ACTIVATION_FNS[activation](y), x)
    if with_mean:
        mean = y.mean(dim=(2, 3), dtype=torch.float32)
    else:
        mean = x.new_empty((0,), dtype=torch.float32)
    return y, mean


def se_excite_scale(
    x: torch.Tensor,
    pooled: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    gate: str,
) -> torch.Tensor:
    hidden = F.relu(F.linear(pooled.to(x.dtype), w1, b1))
    g = GATE_FNS[gate](F.linear(hidden, w2, b2))
    return _as_layout_of(x * g[:, :, None, None], x)


def pointwise_bias_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    activation: str,
    scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    if weight.dim() == 3:  # panels (layout.pack_pointwise_weight)
        weight = unpack_pointwise_weight(weight, bias.shape[0])
    # scale is fp32 whatever x's dtype: the scaled input in x's dtype, as the model's x * g
    if x.dim() == 4:
        xs = x if scale is None else (x * scale[:, :, None, None]).to(x.dtype)
        y = ACTIVATION_FNS[activation](F.conv2d(xs, weight[:, :, None, None], bias))
        y = _as_layout_of(y, x)  # x is channels-last dense (the op's contract)
    else:
        y = ACTIVATION_FNS[activation](F.linear(x if scale is None else (x * scale).to(x.dtype), weight, bias))
    return y if residual is None else y.add_(residual)


def se_gate(pooled, w1, b1, w2, b2, gate):
    """g in fp32 (the op's contract), computed in the weights' dtype (pooled is read in it)."""
    hidden = pointwise_bias_act(pooled.to(w1.dtype), w1, b1, "relu")
    return GATE_FNS[gate](pointwise_bias_act(hidden, w2, b2, "identity")).float()


def conv_bias_act(x, weight, bias, stride, padding, dilation, activation):
    y = ACTIVATION_FNS[activation](F.conv2d(x, weight, bias, stride, padding, dilation))
    # the op's output layout, whatever x's: exactly torch.empty(..., channels_last)'s strides
    return torch.empty(y.shape, dtype=y.dtype, device=y.device, memory_format=torch.channels_last).copy_(y)


def pointwise_dwconv(x, weight, bias, activation, dw_weight, dw_bias, stride, padding, dilation, dw_activation,
                     with_mean):
    hidden = pointwise_bias_act(x, weight, bias, activation)
    return dwconv_bias_act(hidden, dw_weight, dw_bias, stride, padding, dilation, dw_activation, with_mean)


def fold_batchnorm(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds an inference BatchNorm into the conv (or linear) before it.

    w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta, computed
    in fp32 (at least) and returned in the weight's dtype.  Output channels are
    dim 0 of `weight`.
    """
    dtype = torch.promote_types(weight.dtype, torch.float32)
    inv_std = torch.rsqrt(running_var.to(dtype) + eps)
    scale = inv_std if bn_weight is None else bn_weight.to(dtype) * inv_std
    b = torch.zeros_like(running_mean, dtype=dtype) if bias is None else bias.to(dtype)
    shift = (b - running_mean.to(dtype)) * scale
    if bn_bias is not None:
        shift = shift + bn_bias.to(dtype)
    w = weight.to(dtype) * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
    return w.to(weight.dtype), shift.to(weight.dtype)


def run_plan(inputs, tensors, program):
    """mnv3::run_plan: the plan's interpreter (plan/interpreter.py) on this module's ops."""
    from .plan.interpreter import run_reference

    return run_reference(inputs, tensors, program)
