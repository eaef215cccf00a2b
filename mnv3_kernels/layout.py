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
