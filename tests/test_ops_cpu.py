"""The CPU kernels of the mnv3 ops against the pure-PyTorch reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import LAYOUTS, to_layout
from tolerances import assert_lowp_close, assert_op_close

from mnv3_kernels import functional, ops, reference
from mnv3_kernels.layout import is_nhwc_dense

pytestmark = pytest.mark.skipif(
    not torch._C._dispatch_has_kernel_for_dispatch_key("mnv3::dwconv_bias_act", "CPU"),
    reason="the CPU extension is not built (test_build.py fails for that)",
)

dwconv = torch.ops.mnv3.dwconv_bias_act.default
se_op = torch.ops.mnv3.se_excite_scale.default

# (N, C, H, W): every N in {0, 1, 3}, C in {1, 8, 13, 72, 960}, H, W in {1, 2, 7, 14, 15, 113}.
DW_SHAPES = [
    (1, 1, 1, 1),
    (3, 8, 2, 2),
    (1, 13, 7, 15),
    (3, 72, 14, 7),
    (1, 960, 15, 14),
    (1, 8, 113, 113),
    (3, 13, 113, 2),
    (0, 72, 7, 7),
    (1, 960, 1, 2),
]
ACTIVATIONS = ops.ACTIVATIONS


def dw_inputs(shape, k, dtype=torch.float32, layout="nchw"):
    n, c, h, w = shape
    x = to_layout(torch.randn(n, c, h, w, dtype=dtype), layout)
    weight = (torch.randn(c, 1, k, k) / k).to(dtype)
    bias = torch.randn(c).to(dtype)
    return x, weight, bias


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("k,stride,dilation", list(itertools.product((3, 5), (1, 2), (1, 2))))
def test_dwconv_matches_reference(k, stride, dilation, activation, layout):
    pad = (k - 1) // 2 * dilation
    for shape in DW_SHAPES:
        x, w, b = dw_inputs(shape, k, layout=layout)
        args = ([stride] * 2, [pad] * 2, [dilation] * 2, activation, True)
        y, mean = dwconv(x, w, b, *args)
        y_ref, mean_ref = reference.dwconv_bias_act(x, w, b, *args)
        assert_op_close(y, y_ref)
        assert y.stride() == y_ref.stride(), (shape, layout)
        assert_op_close(mean, mean_ref)


@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize(
    "k,stride,padding,dilation",
    [((3, 5), (1, 2), (0, 2), (1, 1)), ((5, 3), (2, 1), (3, 0), (2, 1)), ((1, 1), (2, 2), (0, 0), (1, 1)),
     ((7, 7), (1, 1), (3, 3), (1, 1))],
)
def test_dwconv_asymmetric_and_other_kernel_sizes(k, stride, padding, dilation, layout):
    x = to_layout(torch.randn(2, 24, 17, 12), layout)
    w, b = torch.randn(24, 1, *k), torch.randn(24)
    args = (list(stride), list(padding), list(dilation), "hardswish", True)
    y, mean = dwconv(x, w, b, *args)
    y_ref, mean_ref = reference.dwconv_bias_act(x, w, b, *args)
    assert_op_close(y, y_ref)
    assert_op_close(mean, mean_ref)


def test_dwconv_without_mean_returns_empty_mean():
    x, w, b = dw_inputs((2, 8, 7, 7), 3)
    y, mean = dwconv(x, w, b, [1, 1], [1, 1], [1, 1], "relu", False)
    assert mean.shape == (0,) and mean.dtype == torch.float32
    assert_op_close(y, reference.dwconv_bias_act(x, w, b, [1, 1], [1, 1], [1, 1], "relu", False)[0])


@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
def test_dwconv_output_layout_follows_input(layout):
    x, w, b = dw_inputs((2, 16, 9, 9), 3, layout=layout)
    y, _ = dwconv(x, w, b, [2, 2], [1, 1], [1, 1], "relu6", False)
    assert is_nhwc_dense(y) == (layout == "nhwc")
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize("activation", ("relu", "hardswish"))
def test_dwconv_low_precision(dtype, layout, activation):
    x, w, b = dw_inputs((2, 40, 14, 14), 5, dtype=dtype, layout=layout)
    args = ([1, 1], [2, 2], [1, 1], activation, True)
    y, mean = dwconv(x, w, b, *args)
    assert y.dtype == dtype and mean.dtype == torch.float32
    y32, mean32 = reference.dwconv_bias_act(x.float(), w.float(), b.float(), *args)
    y_lp, mean_lp = reference.dwconv_bias_act(x, w, b, *args)
    assert_lowp_close(y, y32, y_lp, dtype)
    assert_lowp_close(mean, mean32, mean_lp, dtype)


def se_inputs(n, c, h, w, cr, dtype=torch.float32, layout="nchw", pooled_dtype=torch.float32):
    x = to_layout(torch.randn(n, c, h, w, dtype=dtype), layout)
    pooled = x.float().mean(dim=(2, 3)).to(pooled_dtype)
    w1 = (torch.randn(cr, c) / c**0.5).to(dtype)
    b1 = (torch.randn(cr) * 0.1).to(dtype)
    w2 = (torch.randn(c, cr) / cr**0.5).to(dtype)
    b2 = torch.randn(c).to(dtype)
    return x, pooled, w1, b1, w2, b2


SE_SHAPES = [(1, 1, 1, 1, 1), (3, 8, 2, 7, 8), (1, 13, 15, 14, 8), (3, 72, 14, 14, 24), (1, 960, 7, 7, 240),
             (0, 72, 7, 7, 24), (2, 16, 113, 1, 8)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", ops.GATES)
def test_se_excite_scale_matches_reference(gate, layout):
    for shape in SE_SHAPES:
        args = se_inputs(*shape, layout=layout)
        y = se_op(*args, gate)
        y_ref = reference.se_excite_scale(*args, gate)
        assert_op_close(y, y_ref)
        assert y.stride() == y_ref.stride()


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("pooled_in_x_dtype", (False, True))
@pytest.mark.parametrize("gate", ops.GATES)
def test_se_excite_scale_low_precision(dtype, pooled_in_x_dtype, gate):
    args = se_inputs(2, 72, 14, 14, 24, dtype=dtype, layout="nhwc",
                     pooled_dtype=dtype if pooled_in_x_dtype else torch.float32)
    y = se_op(*args, gate)
    assert y.dtype == dtype
    y32 = reference.se_excite_scale(*[a.float() for a in args], gate)
    y_lp = reference.se_excite_scale(*args, gate)
    assert_lowp_close(y, y32, y_lp, dtype)


def test_batch_zero_gives_empty_outputs_of_the_right_shape():
    x, w, b = dw_inputs((0, 13, 15, 15), 3)
    y, mean = functional.dwconv_bias_act(x, w, b, stride=2, padding=1, activation="hardswish", with_mean=True)
    assert y.shape == (0, 13, 8, 8) and mean.shape == (0, 13)
    se_args = se_inputs(0, 13, 8, 8, 8)
    assert functional.se_excite_scale(*se_args).shape == (0, 13, 8, 8)


@pytest.mark.parametrize(
    "sample",
    [
        ((2, 8, 7, 7), 3, [1, 1], [1, 1], [1, 1], "relu", True, "nchw"),
        ((1, 13, 9, 6), 5, [2, 2], [2, 2], [1, 1], "hardswish", True, "nhwc"),
        ((3, 4, 8, 8), 3, [1, 2], [2, 2], [2, 2], "relu6", False, "view"),
        ((0, 4, 5, 5), 3, [1, 1], [1, 1], [1, 1], "identity", True, "nhwc"),
    ],
)
def test_opcheck_dwconv(sample):
    shape, k, stride, padding, dilation, act, with_mean, layout = sample
    x, w, b = dw_inputs(shape, k, layout=layout)
    torch.library.opcheck(dwconv, (x, w, b, stride, padding, dilation, act, with_mean))


@pytest.mark.parametrize("shape,layout,gate", [((2, 8, 7, 7, 4), "nchw", "hardsigmoid"),
                                               ((1, 24, 5, 3, 8), "nhwc", "sigmoid"),
                                               ((2, 6, 4, 4, 2), "view", "hardsigmoid")])
def test_opcheck_se(shape, layout, gate):
    torch.library.opcheck(se_op, (*se_inputs(*shape, layout=layout), gate))


def test_backward_raises_a_clear_error():
    x, w, b = dw_inputs((1, 8, 5, 5), 3)
    x.requires_grad_(True)
    y, _ = dwconv(x, w, b, [1, 1], [1, 1], [1, 1], "relu", False)
    with pytest.raises(RuntimeError, match="inference op and has no backward"):
        y.sum().backward()
