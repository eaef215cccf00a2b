"""The CPU kernels over the shapes that reach every branch of their walks.

fp16 and bf16 run the shared tile arithmetic (csrc/common/dwconv.h: dw_tile
for 3x3/5x5 at stride 1/2, the any-geometry fallback, W tails of a tile,
channel tails of a vector block), which the CUDA kernels run too: on a machine
without a GPU this is what checks their arithmetic.  fp32 channels-last runs
the 16-channel-block tiles of pointwise_dwconv (3x3 / 5x5 kernels on images
under 28 pixels wide, and at any width the geometries the vector walk has no
tile for: dilation, stride 3, 1x1, 7x7) or the CPU's vector walk (interior
tiles, border columns, rows cut by padding, channel blocks of 16/8/4/1).
fp32 in any other layout (NCHW, views) runs the plane walk: rows as vectors
of 8 or 16 outputs (4 at a time for rows of 64 or more, 4 rows at a time for
narrower ones), a last vector overlapping the one before it, rows narrower
than a vector, and the copy into the padded scratch for stride 1, 2 and 3
and for any strides."""

import pytest
import torch

from mnv3_kernels import functional, ops
from op_cases import check_dwconv, check_se, dwconv_params, make_x, se_params

pytestmark = pytest.mark.skipif(
    not torch._C._dispatch_has_kernel_for_dispatch_key("mnv3::dwconv_bias_act", "CPU"),
    reason="the CPU extension is not built (pip install . builds it)",
)

# (N, C, H, W): channel tails (1, 13 = 8 + 4 + 1, 24 = 16 + 8, 29 = 16 + 8 + 4 + 1),
# W tails of a 4-pixel tile (W = 1, 2, 5, 15), tall-thin and wide-flat planes; fp32
# channels-last images under 28 pixels wide with a 3x3 / 5x5 kernel run the
# 16-channel-block tiles (dw_row.h), the one 57 wide the vector walk; the 70-wide one
# has rows of 64 or more outputs at stride 1 (the plane walk's 4-vector tiles).
SHAPES = [(1, 1, 1, 1), (2, 13, 15, 5), (1, 24, 9, 2), (3, 16, 7, 15), (1, 40, 2, 17), (1, 29, 11, 12),
          (1, 29, 4, 57), (1, 3, 6, 70)]
GEOMETRIES = [  # k, stride, dilation, padding (None: "same"-style k//2 * d)
    (3, 1, 1, None), (3, 2, 1, None), (5, 1, 1, None), (5, 2, 1, None),
    (3, 1, 1, 0), (5, 2, 1, 3), (3, 1, 2, None), (5, 1, 2, None), (5, 2, 2, None), (1, 1, 1, 0), (7, 3, 1, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["channels_last", "nchw", "view", "channels_last_offset"])
@pytest.mark.parametrize("k,stride,dilation,padding", GEOMETRIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dwconv_tiles(shape, k, stride, dilation, padding, layout, dtype):
    g = torch.Generator().manual_seed(hash((shape, k, stride, dilation, padding)) % 2**31)
    padding = k // 2 * dilation if padding is None else padding
    if ops.conv_out_size(min(shape[2:]), k, stride, padding, dilation) < 1:
        pytest.skip("empty output: the op refuses it")
    x = make_x(shape, dtype, "cpu", layout, g)
    w, b = dwconv_params(shape[1], k, dtype, "cpu", g)
    for activation in ops.ACTIVATIONS:
        check_dwconv(x, w, b, stride, padding, dilation, activation)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_dwconv_tiles_lowp(k, stride, dtype):
    g = torch.Generator().manual_seed(k * 10 + stride)
    x = make_x((2, 24, 17, 13), dtype, "cpu", "channels_last", g)
    w, b = dwconv_params(24, k, dtype, "cpu", g)
    check_dwconv(x, w, b, stride, k // 2, 1, "hardswish")


@pytest.mark.parametrize("layout", ["channels_last", "nchw", "strided_view"])
@pytest.mark.parametrize("gate", ops.GATES)
def test_se_split_dot(gate, layout):
    g = torch.Generator().manual_seed(7)
    x = make_x((2, 40, 5, 3), torch.float32, "cpu", layout, g)
    pooled = x.float().mean(dim=(2, 3))
    check_se(x, pooled, *se_params(40, 8, torch.float32, "cpu", g), gate)


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("shape", [(2, 29, 11, 12), (1, 40, 7, 7)])
def test_dwconv_tap_major_weights_are_read_in_place(shape, k, stride):
    """fp32 filters stored tap-major (the models' CPU fold, fused_layers.tap_major) take the
    kernel's no-copy path; same results as the packed copy of a contiguous filter."""
    from mnv3_kernels.models.fused_layers import tap_major

    g = torch.Generator().manual_seed(k * 10 + stride)
    x = make_x(shape, torch.float32, "cpu", "channels_last", g)
    w, b = dwconv_params(shape[1], k, torch.float32, "cpu", g)
    wt = tap_major(w)
    assert torch.equal(wt, w) and wt.stride() != w.stride() and wt.stride(0) == 1
    check_dwconv(x, wt, b, stride, k // 2, 1, "relu6")
    args = ([stride] * 2, [k // 2] * 2, [1, 1], "relu6", True)
    for out_t, out_c in zip(functional.dwconv_bias_act(x, wt, b, *args[:-1], with_mean=True),
                            functional.dwconv_bias_act(x, w, b, *args[:-1], with_mean=True)):
        assert torch.equal(out_t, out_c)
