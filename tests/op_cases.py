"""Inputs and checks shared by the kernel sweeps (CPU tiles, CUDA): one way to
build an input in each layout and one way to judge an op's outputs against
mnv3_kernels.reference under tests/tolerances.py."""

from __future__ import annotations

import torch

from mnv3_kernels import reference
from tolerances import assert_lowp_close, assert_op_close

LAYOUTS = ("nchw", "channels_last", "strided_view", "channels_last_offset")


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x ([N, C, H, W]) with the same values in `layout`:
    nchw                  contiguous
    channels_last / nhwc  channels-last dense (the vectorized path when C allows)
    view                  a crop of a zero-padded NCHW tensor: no dense layout
    strided_view          every other channel of a wider NHWC tensor: no dense layout
    channels_last_offset  channels-last dense strides at an odd storage offset
                          (not 16-byte aligned: the scalar NHWC path)
    """
    n, c, h, w = x.shape
    if layout == "nchw":
        return x.contiguous()
    if layout in ("channels_last", "nhwc"):
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "view":
        big = torch.zeros((n, c + 2, h + 2, w + 3), dtype=x.dtype, device=x.device)
        big[:, 1 : c + 1, 1 : h + 1, 2 : w + 2] = x
        return big[:, 1 : c + 1, 1 : h + 1, 2 : w + 2]
    if layout == "strided_view":
        wide = torch.zeros((n, h, w, 2 * c), dtype=x.dtype, device=x.device)
        wide[..., ::2] = x.permute(0, 2, 3, 1)
        return wide.permute(0, 3, 1, 2)[:, ::2]
    if layout == "channels_last_offset":
        base = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
        base[1:].copy_(x.permute(0, 2, 3, 1).reshape(-1))
        return base[1:].as_strided(x.shape, (h * w * c, 1, w * c, c))
    raise ValueError(layout)


def make_x(shape, dtype, device, layout: str, generator=None) -> torch.Tensor:
    """A random [N, C, H, W] tensor in `layout` (see to_layout)."""
    x = torch.randn(shape, dtype=torch.float32, generator=generator).to(device=device, dtype=dtype)
    return to_layout(x, layout)


def dwconv_params(c, k, dtype, device, generator=None):
    w = torch.randn(c, 1, k, k, generator=generator) / k
    b = torch.randn(c, generator=generator)
    return w.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


def check_dwconv(x, w, b, stride, padding, dilation, activation, with_mean=True, ops=None,
                 reference_on_cpu=False):
    """Runs `ops`.dwconv_bias_act (torch.ops.mnv3 unless given: torch.ops.mnv3_emulated
    runs the CUDA kernels under the emulator) on x's device and checks y and mean;
    against references computed on CPU copies when reference_on_cpu (so that a
    sanitizer on the GPU sees the op's kernels only)."""
    args = ([stride] * 2, [padding] * 2, [dilation] * 2, activation, with_mean)
    y, mean = (ops or torch.ops.mnv3).dwconv_bias_act(x, w, b, *args)
    assert y.device == x.device and y.dtype == x.dtype
    if reference_on_cpu:
        x, w, b, y, mean = (t.cpu() for t in (x, w, b, y, mean))
    ref_y, ref_mean = reference.dwconv_bias_act(x.float(), w.float(), b.float(), *args)
    assert y.shape == ref_y.shape
    if x.dtype == torch.float32:
        assert_op_close(y, ref_y)
        assert_op_close(mean, ref_mean)
    else:
        own_y, own_mean = reference.dwconv_bias_act(x, w, b, *args)
        assert_lowp_close(y, ref_y, own_y, x.dtype)
        assert_lowp_close(mean, ref_mean, own_mean, x.dtype)
    assert mean.dtype == torch.float32
    assert mean.shape == ((x.shape[0], x.shape[1]) if with_mean else (0,))
    return y, mean


def se_params(c, cr, dtype, device, generator=None):
    w1 = torch.randn(cr, c, generator=generator) / c**0.5
    b1 = torch.randn(cr, generator=generator)
    w2 = torch.randn(c, cr, generator=generator) / cr**0.5
    b2 = torch.randn(c, generator=generator)
    return [t.to(device=device, dtype=dtype) for t in (w1, b1, w2, b2)]


def check_se(x, pooled, w1, b1, w2, b2, gate, ops=None, reference_on_cpu=False):
    """Runs `ops`.se_excite_scale (as check_dwconv) and checks y."""
    y = (ops or torch.ops.mnv3).se_excite_scale(x, pooled, w1, b1, w2, b2, gate)
    assert y.device == x.device and y.dtype == x.dtype
    if reference_on_cpu:
        x, pooled, w1, b1, w2, b2, y = (t.cpu() for t in (x, pooled, w1, b1, w2, b2, y))
    up = [t.float() for t in (x, pooled, w1, b1, w2, b2)]
    ref = reference.se_excite_scale(*up, gate)
    if x.dtype == torch.float32:
        assert_op_close(y, ref)
    else:
        own = reference.se_excite_scale(x, pooled, w1, b1, w2, b2, gate)
        assert_lowp_close(y, ref, own, x.dtype)
    return y


def pointwise_params(cin, cout, dtype, device, generator=None):
    w = torch.randn(cout, cin, generator=generator) / max(cin, 1) ** 0.5
    b = torch.randn(cout, generator=generator)
    return w.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


def check_pointwise(x, w, b, activation, scale=None, residual=None, ops=None, reference_on_cpu=False):
    """Runs `ops`.pointwise_bias_act (as check_dwconv) and checks y: the fp32
    reference on fp32 copies (scale is fp32 always), and for fp16 / bf16 the
    LOWP rule against PyTorch's own run in that dtype (scale rounded to it)."""
    y = (ops or torch.ops.mnv3).pointwise_bias_act(x, w, b, activation, scale, residual)
    assert y.device == x.device and y.dtype == x.dtype
    if x.dim() == 4:
        assert y.is_contiguous(memory_format=torch.channels_last)
    if reference_on_cpu:
        x, w, b, y = (t.cpu() for t in (x, w, b, y))
        scale, residual = (None if t is None else t.cpu() for t in (scale, residual))
    ref = reference.pointwise_bias_act(x.float(), w.float(), b.float(), activation, scale,
                                       None if residual is None else residual.float())
    if x.dtype == torch.float32:
        assert_op_close(y, ref)
    else:
        own = reference.pointwise_bias_act(x, w, b, activation, None if scale is None else scale.to(x.dtype),
                                           residual)
        assert_lowp_close(y, ref, own, x.dtype)
    return y


def check_pointwise_dwconv(x, w, b, activation, dw_w, dw_b, stride, padding, dilation, dw_activation,
                           with_mean=True, ops=None, reference_on_cpu=False):
    """Runs `ops`.pointwise_dwconv (as check_dwconv) and checks y and mean: the fp32
    reference on fp32 copies, and for fp16 / bf16 the LOWP rule against PyTorch's
    own run of the two halves in that dtype (the expanded tensor rounded to it)."""
    args = ([stride] * 2, [padding] * 2, [dilation] * 2, dw_activation, with_mean)
    y, mean = (ops or torch.ops.mnv3).pointwise_dwconv(x, w, b, activation, dw_w, dw_b, *args)
    assert y.device == x.device and y.dtype == x.dtype and y.is_contiguous(memory_format=torch.channels_last)
    if reference_on_cpu:
        x, w, b, dw_w, dw_b, y, mean = (t.cpu() for t in (x, w, b, dw_w, dw_b, y, mean))
    ref_y, ref_mean = reference.pointwise_dwconv(x.float(), w.float(), b.float(), activation, dw_w.float(),
                                                 dw_b.float(), *args)
    assert y.shape == ref_y.shape and mean.dtype == torch.float32
    assert mean.shape == ((x.shape[0], w.shape[0]) if with_mean else (0,))
    if x.dtype == torch.float32:
        assert_op_close(y, ref_y)
        assert_op_close(mean, ref_mean)
    else:
        own_y, own_mean = reference.pointwise_dwconv(x, w, b, activation, dw_w, dw_b, *args)
        assert_lowp_close(y, ref_y, own_y, x.dtype)
        assert_lowp_close(mean, ref_mean, own_mean, x.dtype)
    return y, mean


def check_se_gate(pooled, w1, b1, w2, b2, gate, ops=None, reference_on_cpu=False):
    """Runs `ops`.se_gate (as check_dwconv) and checks g, fp32 always."""
    g = (ops or torch.ops.mnv3).se_gate(pooled, w1, b1, w2, b2, gate)
    assert g.device == pooled.device and g.dtype == torch.float32
    if reference_on_cpu:
        pooled, w1, b1, w2, b2, g = (t.cpu() for t in (pooled, w1, b1, w2, b2, g))
    ref = reference.se_gate(*(t.float() for t in (pooled, w1, b1, w2, b2)), gate)
    if w1.dtype == torch.float32:
        assert_op_close(g, ref)
    else:
        assert_lowp_close(g, ref, reference.se_gate(pooled.to(w1.dtype), w1, b1, w2, b2, gate), w1.dtype)
    return g


def check_conv(x, w, b, stride, padding, dilation, activation, ops=None, reference_on_cpu=False):
    """Runs `ops`.conv_bias_act (as check_dwconv) and checks y (channels-last always)."""
    args = ([stride] * 2, [padding] * 2, [dilation] * 2, activation)
    y = (ops or torch.ops.mnv3).conv_bias_act(x, w, b, *args)
    assert y.device == x.device and y.dtype == x.dtype and y.is_contiguous(memory_format=torch.channels_last)
    if reference_on_cpu:
        x, w, b, y = (t.cpu() for t in (x, w, b, y))
    ref = reference.conv_bias_act(x.float(), w.float(), b.float(), *args)
    if x.dtype == torch.float32:
        assert_op_close(y, ref)
    else:
        assert_lowp_close(y, ref, reference.conv_bias_act(x, w, b, *args), x.dtype)
    return y


# ------------------------------------------------------------------ launch branches of the CUDA kernels
# A launch log is [(kernel, grid, block, dynamic smem bytes)] as the CUDA emulator
# records it (mnv3_kernels.emulated.module().launch_log()); the kernel names
# carry the launch branch (check_launch in csrc/cuda/*.cu).
def _threads(block):
    return block[0] * block[1] * block[2]


LAUNCH_BRANCHES = {
    "dwconv NHWC, 16-byte vectors, one chunk": lambda L: any(
        k == "dwconv_nhwc_kernel (16-byte vectors, one chunk)" for k, *_ in L),
    "dwconv NHWC, 16-byte vectors, many chunks, squeeze by the last block": lambda L: any(
        k == "dwconv_nhwc_kernel (16-byte vectors, chunks, squeeze by the last block)" for k, *_ in L),
    "dwconv NHWC, scalar, one chunk": lambda L: any(k == "dwconv_nhwc_kernel (scalar, one chunk)" for k, *_ in L),
    "dwconv NHWC, scalar, many chunks, squeeze by the last block": lambda L: any(
        k == "dwconv_nhwc_kernel (scalar, chunks, squeeze by the last block)" for k, *_ in L),
    "dwconv NHWC, full 256-thread block": lambda L: any(
        k.startswith("dwconv_nhwc_kernel") and _threads(b) == 256 for k, _g, b, _s in L),
    "dwconv NHWC, block shrunk for a small problem": lambda L: any(
        k.startswith("dwconv_nhwc_kernel") and _threads(b) < 256 for k, _g, b, _s in L),
    "dwconv NHWC, narrower channel group (tc < 32)": lambda L: any(
        k.startswith("dwconv_nhwc_kernel") and b[0] < 32 for k, _g, b, _s in L),
    "dwconv NHWC, many channel groups (grid.y > 1)": lambda L: any(
        k.startswith("dwconv_nhwc_kernel") and g[1] > 1 for k, g, _b, _s in L),
    "dwconv planes (any strides), full block": lambda L: any(
        k == "dwconv_planes_kernel" and _threads(b) == 256 for k, _g, b, _s in L),
    "dwconv planes (any strides), partial block": lambda L: any(
        k == "dwconv_planes_kernel" and _threads(b) < 256 for k, _g, b, _s in L),
    "se excite, 16-byte weight rows": lambda L: any(k.startswith("se_gate_kernel (16-byte rows") for k, *_ in L),
    "se excite, scalar weight rows": lambda L: any(k.startswith("se_gate_kernel (scalar rows") for k, *_ in L),
    "se excite, one group of hidden units": lambda L: any(
        k.startswith("se_gate_kernel") and k.endswith("one group)") and g[1] == 1 for k, g, _b, _s in L),
    "se excite over many blocks, gate by the last block": lambda L: any(
        k.startswith("se_gate_kernel") and k.endswith("by the last block)") and g[1] > 1 for k, g, _b, _s in L),
    "se scale NHWC, 16-byte vectors": lambda L: any(k == "scale_nhwc_kernel (16-byte vectors)" for k, *_ in L),
    "se scale NHWC, scalar": lambda L: any(k == "scale_nhwc_kernel (scalar)" for k, *_ in L),
    "se scale NCHW planes, 16-byte vectors": lambda L: any(k == "scale_planes_kernel" for k, *_ in L),
    "se scale, any strides": lambda L: any(k == "scale_strided_kernel" for k, *_ in L),
    "dense conv (the stem)": lambda L: any(k == "conv_direct_kernel" for k, *_ in L),
    "pointwise GEMM (fp32), 16-byte vectors": lambda L: any(
        k.startswith("pw_gemm_kernel (16-byte vectors") for k, *_ in L),
    "pointwise GEMM (fp32), scalar": lambda L: any(k.startswith("pw_gemm_kernel (scalar") for k, *_ in L),
    "pointwise GEMM, K whole in a block": lambda L: any(
        k.startswith(("pw_gemm_kernel", "pw_mma_kernel")) and "split K" not in k and g[2] == 1 for k, g, _b, _s in L),
    "pointwise GEMM (fp32), split K, epilogue by the last block": lambda L: any(
        k.startswith("pw_gemm_kernel") and "split K" in k and g[2] > 1 for k, g, _b, _s in L),
    "pointwise tensor-core GEMM (fp16 / bf16), 16-byte vectors": lambda L: any(
        k.startswith("pw_mma_kernel (16-byte vectors") for k, *_ in L),
    "pointwise tensor-core GEMM (fp16 / bf16), scalar": lambda L: any(
        k.startswith("pw_mma_kernel (scalar") for k, *_ in L),
    "pointwise tensor-core GEMM (fp16 / bf16), split K": lambda L: any(
        k.startswith("pw_mma_kernel") and "split K" in k and g[2] > 1 for k, g, _b, _s in L),
    "pointwise GEMM, many row and channel tiles": lambda L: any(
        k.startswith(("pw_gemm_kernel", "pw_mma_kernel")) and g[0] > 1 and g[1] > 1 for k, g, _b, _s in L),
    "expand + depthwise, 16-byte vectors": lambda L: any(k.startswith("pwdw_kernel (16-byte vectors") for k, *_ in L),
    "expand + depthwise, scalar": lambda L: any(k.startswith("pwdw_kernel (scalar") for k, *_ in L),
    "expand + depthwise, one tile a sample": lambda L: any(
        k.startswith("pwdw_kernel") and k.endswith("one tile a sample)") for k, *_ in L),
    "expand + depthwise, many tiles, no squeeze": lambda L: any(
        k.startswith("pwdw_kernel") and k.endswith(", tiles)") for k, *_ in L),
    "expand + depthwise, many tiles, squeeze by the last block": lambda L: any(
        k.startswith("pwdw_kernel") and k.endswith("by the last block)") for k, *_ in L),
    "expand + depthwise, many channel groups (grid.y > 1)": lambda L: any(
        k.startswith("pwdw_kernel") and g[1] > 1 for k, g, _b, _s in L),
}




def missed_launch_branches(launches) -> list[str]:
    """The LAUNCH_BRANCHES a launch log never reached; also fails on a launch that
    no check_launch followed (a kernel whose errors would go unreported)."""
    unnamed = [launch for launch in launches if not launch[0]]
    assert not unnamed, f"launches no check_launch followed: {unnamed[:5]}"
    return [name for name, reached in LAUNCH_BRANCHES.items() if not reached(launches)]
