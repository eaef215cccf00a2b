"""Pure-PyTorch reference of every mnv3 op: the ground truth of the tests and
the fallback backend.

Each function computes what the eager PyTorch decomposition computes, in the
input's dtype, and returns outputs with the dtype and layout the op's schema
promises (see ops.py).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from .layout import empty_4d, unpack_pointwise_weight

ACTIVATION_FNS = {
    "identity": lambda t: t,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
}
GATE_FNS = {"hardsigmoid": F.hardsigmoid, "sigmoid": torch.sigmoid}


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
    if x.dim() == 4:
        xs = x if scale is None else x * scale[:, :, None, None]
        y = ACTIVATION_FNS[activation](F.conv2d(xs, weight[:, :, None, None], bias))
        y = _as_layout_of(y, x)  # x is channels-last dense (the op's contract)
    else:
        y = ACTIVATION_FNS[activation](F.linear(x if scale is None else x * scale, weight, bias))
    return y if residual is None else y.add_(residual)


def se_gate(pooled, w1, b1, w2, b2, gate):
    hidden = pointwise_bias_act(pooled, w1, b1, "relu")
    return GATE_FNS[gate](pointwise_bias_act(hidden, w2, b2, "identity"))


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


# mnv3::run_plan's program: a flat int list of steps, each a PLAN_* code and
# then its arguments (tensor arguments as indices into the op's tensor list;
# activations and gates as indices into ops.ACTIVATIONS / ops.GATES):
#   PLAN_BLOCK                                           the current y is the block input
#   PLAN_CONV  w b sh sw ph pw dh dw act                 y = conv_bias_act(y, ...)
#   PLAN_DW    w b sh sw ph pw dh dw act want_mean       y, mean = dwconv_bias_act(y, ...)
#   PLAN_PWDW  w b act dw_w dw_b sh sw ph pw dh dw dw_act want_mean
#                                                        y, mean = pointwise_dwconv(y, ...)
#   PLAN_GATE  w1 b1 w2 b2 gate                          g = se_gate(mean, ...)
#   PLAN_PW    w b act scaled residual                   y = pointwise_bias_act(y, w, b, act,
#                                                            g if scaled, block input if residual)
#   PLAN_POOL                                            y = y's spatial mean, [N, C]
# The C++ executor (csrc/cpu/pointwise_bias_act_cpu.cpp, PlanCode) uses the same codes.
PLAN_BLOCK, PLAN_CONV, PLAN_DW, PLAN_PWDW, PLAN_GATE, PLAN_PW, PLAN_POOL = range(7)
ACTIVATIONS = tuple(ACTIVATION_FNS)  # ops.ACTIVATIONS: codes 0..3 in csrc/common/activation.h
GATES = tuple(GATE_FNS)  # ops.GATES: codes 0..1


def interpret_plan(x, tensors, program, ops) -> torch.Tensor:
    """Runs a run_plan program step by step with `ops` (an object with conv_bias_act,
    dwconv_bias_act, pointwise_dwconv, se_gate and pointwise_bias_act): the reference
    below, and run_plan's fake kernel (the mnv3 ops under fake tensors)."""
    program = list(program)
    pc = 0

    def take(n=1):
        nonlocal pc
        if pc + n > len(program):
            raise ValueError("program ends inside a step")
        vals = program[pc:pc + n]
        pc += n
        return vals

    def tensor():
        (k,) = take()
        if not 0 <= k < len(tensors):
            raise ValueError(f"program's tensor index {k} is out of range (tensors has {len(tensors)})")
        return tensors[k]

    def act():
        (k,) = take()
        if not 0 <= k < len(ACTIVATIONS):
            raise ValueError(f"program's activation code {k} is out of range")
        return ACTIVATIONS[k]

    y = block_input = x
    mean = gate = None
    while pc < len(program):
        (code,) = take()
        if code == PLAN_BLOCK:
            block_input = y
        elif code == PLAN_CONV:
            w, b = tensor(), tensor()
            s, p, d = take(2), take(2), take(2)
            y, mean = ops.conv_bias_act(y, w, b, s, p, d, act()), None
        elif code == PLAN_DW:
            w, b = tensor(), tensor()
            s, p, d = take(2), take(2), take(2)
            a, (want_mean,) = act(), take()
            y, mean = ops.dwconv_bias_act(y, w, b, s, p, d, a, bool(want_mean))
            mean = mean if want_mean else None
        elif code == PLAN_PWDW:
            w, b, a = tensor(), tensor(), act()
            dw_w, dw_b = tensor(), tensor()
            s, p, d = take(2), take(2), take(2)
            dw_a, (want_mean,) = act(), take()
            y, mean = ops.pointwise_dwconv(y, w, b, a, dw_w, dw_b, s, p, d, dw_a, bool(want_mean))
            mean = mean if want_mean else None
        elif code == PLAN_GATE:
            w1, b1, w2, b2 = tensor(), tensor(), tensor(), tensor()
            (g,) = take()
            if mean is None or g not in (0, 1):
                raise ValueError("a gate step needs the squeeze of the step before it and a gate code 0 or 1")
            gate, mean = ops.se_gate(mean, w1, b1, w2, b2, GATES[g]), None
        elif code == PLAN_PW:
            w, b, a = tensor(), tensor(), act()
            scaled, residual = take(2)
            if scaled and gate is None:
                raise ValueError("a scaled step needs a gate step before it")
            y = ops.pointwise_bias_act(y, w, b, a, gate if scaled else None, block_input if residual else None)
            mean = gate = None
        elif code == PLAN_POOL:
            y, mean, gate = y.mean(dim=(2, 3), dtype=torch.float32), None, None
        else:
            raise ValueError(f"unknown run_plan step code {code}")
    return y


def run_plan(x, tensors, program):
    return interpret_plan(x, tensors, program, sys.modules[__name__])  # this module's functions
