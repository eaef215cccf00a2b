"""The public functional API of the backend-dispatched mnv3 ops: argument
normalization (ints or pairs, a missing bias, 1x1 conv weights), autocast, the
argument checks of ops.py, then the implementation backends.py picks for the
tensors' device.  The top layer: ops.py (schemas, checks, fakes) sits below it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import backends
from .ops import _check_float_tensor, _pair, _shape, check_dwconv_args, check_se_args


def _autocast(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Under torch.autocast for the tensors' device, the op runs in the autocast dtype
    (like F.conv2d does), so a fused model follows the user's autocast region."""
    device_type = tensors[0].device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    return list(tensors)


def dwconv_bias_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    activation: str = "identity",
    with_mean: bool = False,
):
    """Depthwise conv + bias + activation in one pass (BatchNorm folded into weight/bias).

    Returns y, or (y, mean) with mean the fp32 [N, C] spatial mean of y when
    with_mean=True (the SE squeeze, computed in the same pass).  Runs on the
    backend that mnv3_kernels.backends selects for x's device; under
    torch.autocast in the autocast dtype.
    """
    stride, padding, dilation = _pair("stride", stride), _pair("padding", padding), _pair("dilation", dilation)
    if bias is None:
        _check_float_tensor("x", x)
        bias = torch.zeros(x.shape[1] if x.dim() > 1 else 0, dtype=x.dtype, device=x.device)
    if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor):
        x, weight, bias = _autocast(x, weight, bias)
    check_dwconv_args(x, weight, bias, stride, padding, dilation, activation)
    impl = backends.implementation("dwconv_bias_act", x.device)
    y, mean = impl(x, weight, bias, stride, padding, dilation, activation, bool(with_mean))
    return (y, mean) if with_mean else y


def se_excite_scale(
    x: torch.Tensor,
    pooled: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    gate: str = "hardsigmoid",
) -> torch.Tensor:
    """y = x * gate(w2 @ relu(w1 @ pooled + b1) + b2), the SE excite and scale in one op.

    pooled is the [N, C] spatial mean of x (fp32 or x's dtype), e.g. the second
    output of dwconv_bias_act(..., with_mean=True).  w1 [Cr, C] and w2 [C, Cr]
    may also be given as 1x1 conv weights [Cr, C, 1, 1] / [C, Cr, 1, 1].
    """
    w1 = _squeeze_1x1("w1", w1)
    w2 = _squeeze_1x1("w2", w2)
    if all(isinstance(t, torch.Tensor) for t in (x, w1, b1, w2, b2)):
        x, w1, b1, w2, b2 = _autocast(x, w1, b1, w2, b2)  # pooled may stay fp32
    check_se_args(x, pooled, w1, b1, w2, b2, gate)
    impl = backends.implementation("se_excite_scale", x.device)
    return impl(x, pooled, w1, b1, w2, b2, gate)


def _squeeze_1x1(name: str, w):
    if isinstance(w, torch.Tensor) and w.dim() == 4:
        if w.shape[2] != 1 or w.shape[3] != 1:
            raise ValueError(f"{name} given as a conv weight must be 1x1, got {_shape(w)}")
        return w.flatten(1)
    return w
