"""The one layout rule every implementation of the mnv3 ops follows.

An op's 4-d output is channels-last when its input `x` is channels-last dense
(exactly the strides torch.empty(..., memory_format=torch.channels_last)
gives), else contiguous NCHW.  csrc/common/op_glue.h (is_nhwc_dense) states
the same rule for the C++ kernels; the fake kernels use this one, so all
backends agree on output strides.
"""

from __future__ import annotations

import torch


def is_nhwc_dense(x: torch.Tensor) -> bool:
    if x.dim() != 4:
        return False
    _, c, h, w = x.shape
    s = x.stride()
    return s[1] == 1 and s[3] == c and s[2] == w * c and s[0] == h * w * c


def empty_4d(x: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    fmt = torch.channels_last if is_nhwc_dense(x) else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


# mnv3::pointwise_bias_act / pointwise_dwconv read their weight as panels of
# PANEL output channels: [ceil(Cout/PANEL), Cin, PANEL], the last panel
# zero-padded, so a register tile streams its panel front to back
# (csrc/cpu/pointwise_bias_act_cpu.cpp).  Callers that run a layer many times
# pack its weight once; a plain [Cout, Cin] weight is packed on every call.
PANEL = 16


def pack_pointwise_weight(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin] -> its contiguous [ceil(Cout/16), Cin, 16] panels (same dtype and device)."""
    cout, cin = weight.shape
    panels = -(-cout // PANEL)
    padded = weight.new_zeros(panels * PANEL, cin)
    padded[:cout] = weight
    return padded.view(panels, PANEL, cin).transpose(1, 2).contiguous()


def unpack_pointwise_weight(panels: torch.Tensor, cout: int) -> torch.Tensor:
    """The [Cout, Cin] matrix of pack_pointwise_weight's panels."""
    return panels.transpose(1, 2).reshape(-1, panels.shape[1])[:cout]
