"""The convolutions and linear layers around the fused ops, on CPU: conv or
linear + bias + activation (+ the residual add) as one oneDNN call on weights
prepacked once.

MobileNetV3 spends most of its CPU time in the 1x1 expand / project convs.
Eager PyTorch runs each as a convolution that reorders its weights on every
call, then the activation and the residual add as separate passes over the
activation.  Here:
- a 1x1 conv (stride 1, no padding, groups 1) on a channels-last tensor is a
  matrix product [N*H*W, Cin] x [Cin, Cout] on a view of the same memory:
  oneDNN's linear with the activation (or the residual add) fused
  (torch.ops.mkldnn._linear_pointwise, the op torch.compile's freezing pass
  uses for linear layers).  Measured on 2 cores at batch 1 it matches or beats
  the fused oneDNN convolution on every MobileNetV3 shape, and avoids that
  convolution's poor two-thread split on few, wide output channels (16 -> 64
  at 112x112: 3.8 ms as a convolution, 0.17 ms as a linear);
- any other conv runs the fused oneDNN convolution
  (torch.ops.mkldnn._convolution_pointwise);
- nn.Linear layers (the classifier) run the same fused linear.
Where the CPU extension is loaded, the 1x1 convs and the Linears run
mnv3::pointwise_bias_act instead (ops.py; csrc/cpu/pointwise_bias_act_cpu.cpp),
and a conv with few taps (the 3x3 stem) mnv3::conv_bias_act, reading the
model's input in whatever layout it comes (no channels-last copy first):
the same fused GEMM on weights packed once into 16-channel panels, without oneDNN's ~20 us
fixed cost per call (measured on 2 cores for a 16x16 Linear: 23 us, against
3.5 us for mnv3::pointwise_bias_act), and with the SE gate applied to its
input (`scale`).
Used only for fp32 CPU tensors in eager mode with the native backend (convs:
channels-last input); everything else takes F.conv2d / F.linear.  If this
torch lacks the ops, prepack() returns None and the callers fall back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import is_nhwc_dense, pack_pointwise_weight

# op activation name -> (oneDNN unary attr, its scalars)
_ATTRS = {"identity": ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0]),
          "hardswish": ("hardswish", [])}
# The reorder picks a blocked weight format from an example input size; any
# input size runs on the packed weight (checked in tests/test_cpu_conv.py).
_EXAMPLE_HW = 56
# mnv3::conv_bias_act packs its weight on every call and keeps no cache blocking
# over the taps: meant for the stem (27 taps); wider convs stay on oneDNN.
_NATIVE_CONV_MAX_TAPS = 64


def available() -> bool:
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_convolution_pointwise")
            and hasattr(mkldnn, "_reorder_convolution_weight") and hasattr(mkldnn, "_linear_pointwise")
            and hasattr(mkldnn, "_reorder_linear_weight"))


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
    linear: bool  # runs as a matrix product on the [N*H*W, C] view (a 1x1 conv or a Linear)
    out_features: int
    activation: str = "identity"
    native: bool = False  # our kernels: a 1x1 conv / Linear (linear) runs mnv3::pointwise_bias_act on
    # weight panels [ceil(Cout/16), Cin, 16], another conv mnv3::conv_bias_act on its [Cout, Cin, kh, kw] weight


def native_available() -> bool:
    """Whether mnv3::pointwise_bias_act has its CPU kernel (the CPU extension loaded)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("mnv3::pointwise_bias_act", "CPU")


def _usable(weight: torch.Tensor, activation: str) -> bool:
    """fp32 CPU weights, a supported activation, and a kernel to run them: ours
    (1x1 convs and Linears) or oneDNN's."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and activation in _ATTRS
            and (available() or native_available()))


def prepack(weight: torch.Tensor, bias: torch.Tensor, stride, padding, dilation, groups: int,
            activation: str) -> PackedConv | None:
    """The packed conv (weight [Cout, Cin/groups, kh, kw]), or None where the fused
    oneDNN path does not apply."""
    if not _usable(weight, activation):
        return None
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    attr, scalars = _ATTRS[activation]
    pointwise = (weight.shape[2:] == (1, 1) and groups == 1 and stride == [1, 1] and padding == [0, 0])
    # Ours: mnv3::pointwise_bias_act, or mnv3::conv_bias_act for a conv with few taps (the stem: 3x3x3)
    if native_available() and groups == 1 and (pointwise or weight[0].numel() <= _NATIVE_CONV_MAX_TAPS):
        w = pack_pointwise_weight(weight.flatten(1)) if pointwise else weight.contiguous()
        return PackedConv(w, bias.contiguous(), stride, padding, dilation, groups, attr, scalars, pointwise,
                          weight.shape[0], activation, True)
    if not available():
        return None
    try:
        if pointwise:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.flatten(1).contiguous(), None)
        else:
            example = [1, weight.shape[1] * groups, _EXAMPLE_HW, _EXAMPLE_HW]
            packed = torch.ops.mkldnn._reorder_convolution_weight(weight.contiguous(), padding, stride, dilation,
                                                                  groups, example)
    except RuntimeError:  # an op signature this torch does not have: use F.conv2d
        return None
    return PackedConv(packed, bias.contiguous(), stride, padding, dilation, groups, attr, scalars, pointwise,
                      weight.shape[0])


def prepack_linear(weight: torch.Tensor, bias: torch.Tensor, activation: str = "identity") -> PackedConv | None:
    """The packed nn.Linear (weight [out, in]) + activation, or None where it does not apply."""
    if not _usable(weight, activation):
        return None
    attr, scalars = _ATTRS[activation]
    if native_available():
        return PackedConv(pack_pointwise_weight(weight), bias.contiguous(), [], [], [], 1, attr, scalars, True,
                          weight.shape[0], activation, True)
    if not available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
    except RuntimeError:
        return None
    return PackedConv(packed, bias.contiguous(), [], [], [], 1, attr, scalars, True, weight.shape[0], activation)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] channels-last -> the [N*H*W, C] matrix on the same memory."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t with exactly the strides of torch.empty(..., memory_format=channels_last) (a
    copy only where they differ, e.g. size-1 dimensions; layout.is_nhwc_dense)."""
    return t if is_nhwc_dense(t) else torch.empty(t.shape, dtype=t.dtype, device=t.device,
                                                  memory_format=torch.channels_last).copy_(t)


def run(p: PackedConv, x: torch.Tensor, residual: torch.Tensor | None = None,
        scale: torch.Tensor | None = None) -> torch.Tensor:
    """act(conv(x) + bias) or, with residual (only for activation 'identity'), conv(x) + bias + residual.
    x: channels-last dense [N, C, H, W] for a conv; contiguous [N, in] for a packed Linear.
    scale (1x1 convs only): an fp32 [N, C] factor per input channel (the SE gate), x * scale first.
    A native KxK conv (mnv3::conv_bias_act) reads x in any layout."""
    if p.native and not p.linear:
        if scale is not None:
            x = x * scale[:, :, None, None]
        y = torch.ops.mnv3.conv_bias_act.default(x, p.weight, p.bias, p.stride, p.padding, p.dilation, p.activation)
        return y if residual is None else y.add_(residual)
    if p.native:
        if x.dim() == 4:  # the op reads exactly-dense channels-last rows
            x, residual = _dense(x), None if residual is None else _dense(residual)
        return torch.ops.mnv3.pointwise_bias_act.default(x, p.weight, p.bias, p.activation, scale, residual)
    if scale is not None:
        x = (x * scale[:, :, None, None]).contiguous(memory_format=torch.channels_last)
    if p.linear:
        if x.dim() == 2:  # nn.Linear
            return torch.ops.mkldnn._linear_pointwise(x, p.weight, p.bias, p.attr, p.scalars, "")
        n, _, h, w = x.shape
        rows = _rows(x)
        if residual is None:
            y = torch.ops.mkldnn._linear_pointwise(rows, p.weight, p.bias, p.attr, p.scalars, "")
        else:
            y = torch.ops.mkldnn._linear_pointwise.binary(rows, _rows(residual), p.weight, p.bias, "add")
        return y.view(n, h, w, p.out_features).permute(0, 3, 1, 2)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, p.weight, p.bias, p.padding, p.stride, p.dilation,
                                                       p.groups, p.attr, p.scalars, "")
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, p.weight, p.bias, p.padding, p.stride,
                                                          p.dilation, p.groups, "add", None, None, [], None)
