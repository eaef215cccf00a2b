"""The convolutions and linear layers around the fused ops on CPU, for the
module path of the drop-in MobileNetV3 (its live plan and freeze() run the same
ops inside mnv3::run_plan): conv or linear + bias + activation (+ the residual
add, + an SE gate on the input) as one mnv3 op call on weights packed once.

- a 1x1 conv (stride 1, no padding, groups 1) on a channels-last tensor is a
  matrix product on its [N*H*W, Cin] rows: mnv3::pointwise_bias_act on the
  weight packed once into 16-channel panels (layout.pack_pointwise_weight),
  with the activation, the residual add and the SE gate (`scale`) fused;
- nn.Linear layers (the classifier) run the same op on [N, Cin] rows;
- a conv with few taps (the 3x3 stem: <= _NATIVE_CONV_MAX_TAPS) runs
  mnv3::conv_bias_act, reading the input in whatever layout it comes.
Everything else returns None from prepack and takes F.conv2d / F.linear.
(An earlier version ran these layers on oneDNN's fused ops where the CPU
extension was not built; without the extension the native backend is never
chosen, so that half was dead code on every path and went.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import is_nhwc_dense, pack_pointwise_weight
from .vocabulary import ACTIVATIONS

# mnv3::conv_bias_act packs its weight on every call and keeps no cache blocking
# over the taps: meant for the stem (27 taps); wider convs stay on oneDNN.
_NATIVE_CONV_MAX_TAPS = 64


@dataclass(frozen=True)
class PackedConv:
    weight: torch.Tensor  # linear: panels [ceil(Cout/16), Cin, 16]; else the [Cout, Cin, kh, kw] weight
    bias: torch.Tensor
    stride: list
    padding: list
    dilation: list
    groups: int
    linear: bool  # runs mnv3::pointwise_bias_act on the [N*H*W, C] rows (a 1x1 conv or a Linear)
    out_features: int
    activation: str = "identity"


def native_available() -> bool:
    """Whether mnv3::pointwise_bias_act has its CPU kernel (the CPU extension loaded)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("mnv3::pointwise_bias_act", "CPU")


def _usable(weight: torch.Tensor, activation: str) -> bool:
    """fp32 CPU weights, one of the ops' activations, and the CPU extension to run them."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and activation in ACTIVATIONS
            and native_available())


def prepack(weight: torch.Tensor, bias: torch.Tensor, stride, padding, dilation, groups: int,
            activation: str) -> PackedConv | None:
    """The packed conv (weight [Cout, Cin/groups, kh, kw]), or None where no mnv3 op runs it."""
    if not _usable(weight, activation) or groups != 1:
        return None
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    pointwise = weight.shape[2:] == (1, 1) and stride == [1, 1] and padding == [0, 0]
    if not pointwise and weight[0].numel() > _NATIVE_CONV_MAX_TAPS:
        return None
    w = pack_pointwise_weight(weight.flatten(1)) if pointwise else weight.contiguous()
    return PackedConv(w, bias.contiguous(), stride, padding, dilation, groups, pointwise, weight.shape[0], activation)


def prepack_linear(weight: torch.Tensor, bias: torch.Tensor, activation: str = "identity") -> PackedConv | None:
    """The packed nn.Linear (weight [out, in]) + activation, or None where it does not apply."""
    if not _usable(weight, activation):
        return None
    return PackedConv(pack_pointwise_weight(weight), bias.contiguous(), [], [], [], 1, True, weight.shape[0],
                      activation)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t with exactly the strides of torch.empty(..., memory_format=channels_last) (a
    copy only where they differ, e.g. size-1 dimensions; layout.is_nhwc_dense)."""
    return t if is_nhwc_dense(t) else torch.empty(t.shape, dtype=t.dtype, device=t.device,
                                                  memory_format=torch.channels_last).copy_(t)


def run(p: PackedConv, x: torch.Tensor, residual: torch.Tensor | None = None,
        scale: torch.Tensor | None = None) -> torch.Tensor:
    """act(conv(x) + bias) (+ residual).  x: channels-last dense [N, C, H, W] for a 1x1
    conv, [N, in] for a Linear, any layout for a k x k conv.  scale: an fp32 [N, C]
    factor per input channel (the SE gate), applied to x as it is read."""
    if not p.linear:
        if scale is not None:
            x = x * scale[:, :, None, None]
        y = torch.ops.mnv3.conv_bias_act.default(x, p.weight, p.bias, p.stride, p.padding, p.dilation, p.activation)
        return y if residual is None else y.add_(residual)
    if x.dim() == 4:  # the op reads exactly-dense channels-last rows
        x, residual = _dense(x), None if residual is None else _dense(residual)
    return torch.ops.mnv3.pointwise_bias_act.default(x, p.weight, p.bias, p.activation, scale, residual)
