"""The CPU fast path's GEMM ops: mnv3::pointwise_bias_act (1x1 conv / Linear + bias +
activation, with the SE gate applied to its input and the residual in its epilogue),
mnv3::pointwise_dwconv (an inverted residual's expand and depthwise convs in one
pass), mnv3::conv_bias_act (the stem: a dense conv reading its input in any
layout) and mnv3::se_gate (an SE block's gate from its squeeze), against the
pure-PyTorch reference."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tolerances import assert_op_close

from mnv3_kernels import cpu_conv, reference
from mnv3_kernels.layout import pack_pointwise_weight, unpack_pointwise_weight

pytestmark = pytest.mark.skipif(not cpu_conv.native_available(), reason="the CPU extension is not built")

ACTS = ("identity", "relu", "relu6", "hardswish")
pointwise = torch.ops.mnv3.pointwise_bias_act.default
pointwise_dw = torch.ops.mnv3.pointwise_dwconv.default
conv = torch.ops.mnv3.conv_bias_act.default
se_gate = torch.ops.mnv3.se_gate.default


def nhwc(*shape) -> torch.Tensor:
    return torch.empty(shape, memory_format=torch.channels_last).normal_()


def assert_same_layout(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.stride() == expected.stride(), (actual.stride(), expected.stride())


def assert_fake_kernel_raises(op, args: dict, error, match: str) -> None:
    """op(**args) with every tensor argument a fake tensor (no data): the op's fake
    kernel must raise `error` matching `match`, as the CPU kernel does."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode, pytest.raises(error, match=match):
        op(**{k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()})


# Row counts around the 12-row register tile (tails of 8, 4, 2, 1 rows), channel
# counts around the 16-lane panel (partial last panels), and single rows (the
# matrix-vector walk: 128-column blocks, partial last block and vector).
@pytest.mark.parametrize("shape,cout", [((1, 16, 7, 5), 24), ((2, 40, 3, 3), 120), ((1, 33, 1, 1), 16),
                                        ((3, 17, 4, 4), 1), ((1, 5, 13, 1), 33), ((1, 1, 6, 2), 7),
                                        ((1, 24, 1, 1), 1000), ((1, 7, 1, 1), 131), ((1, 9, 1, 1), 256),
                                        ((2, 40, 3, 2), 3), ((1, 24, 2, 1), 15)])  # fewer channels than a vector
@pytest.mark.parametrize("activation", ACTS)
def test_pointwise_conv_matches_reference(shape, cout, activation):
    n, cin = shape[:2]
    x = nhwc(*shape)
    w, b = torch.randn(cout, cin) / cin**0.5, torch.randn(cout)
    scale = torch.rand(n, cin)
    residual = nhwc(n, cout, *shape[2:])
    for weight in (w, w.t().contiguous().t(), pack_pointwise_weight(w)):  # packed per call (2 layouts) / panels
        for s, r in ((None, None), (scale, None), (None, residual), (scale, residual)):
            y = pointwise(x, weight, b, activation, s, r)
            expected = reference.pointwise_bias_act(x, w, b, activation, s, r)
            assert_same_layout(y, expected)
            assert_op_close(y, expected)


@pytest.mark.parametrize("rows,cin,cout", [(1, 960, 1280), (5, 40, 24), (13, 7, 17)])
def test_pointwise_linear_matches_reference(rows, cin, cout):
    x, w, b = torch.randn(rows, cin), torch.randn(cout, cin) / cin**0.5, torch.randn(cout)
    for activation in ("identity", "hardswish"):
        y = pointwise(x, pack_pointwise_weight(w), b, activation)
        assert_op_close(y, reference.pointwise_bias_act(x, w, b, activation))


def test_pointwise_empty_inputs():
    w, b = torch.randn(8, 4), torch.randn(8)
    assert pointwise(nhwc(0, 4, 3, 3), w, b, "relu").shape == (0, 8, 3, 3)
    assert pointwise(torch.randn(0, 4), w, b, "relu").shape == (0, 8)


# (shape, hidden, k, stride, padding, dilation): MobileNetV3's strided 3x3 / 5x5 at
# high resolution, dilation 2, no padding, 1x1, odd sizes and channel tails.
DW_CASES = [((1, 16, 112, 112), 64, 3, 2, 1, 1), ((2, 24, 9, 7), 72, 5, 1, 2, 1), ((1, 40, 14, 14), 120, 5, 2, 2, 1),
            ((1, 7, 6, 5), 20, 3, 1, 2, 2), ((3, 8, 5, 9), 17, 3, 2, 0, 1), ((1, 8, 4, 4), 16, 1, 1, 0, 1),
            ((2, 3, 1, 1), 5, 3, 1, 1, 1),
            # 5x5 at dilation 2 (the segmentation backbones' last stage): whole image
            # (width 14 below avx512) and row walk
            ((1, 16, 14, 14), 96, 5, 1, 4, 2), ((1, 8, 9, 60), 24, 5, 1, 4, 2),
            # the row walk (width >= 28, >= 14 at avx512: ring_min_width) at 3x3 / 5x5,
            # strides 1 and 2, with a last partial 8-pixel depthwise tile and a
            # partial channel block; bands of rows across samples
            ((1, 8, 57, 61), 24, 5, 1, 2, 1), ((1, 6, 60, 58), 40, 5, 2, 2, 1), ((2, 6, 9, 59), 16, 3, 1, 1, 1),
            ((3, 8, 28, 27), 72, 3, 1, 1, 1), ((3, 8, 15, 14), 40, 5, 1, 2, 1),
            # the whole-image walk (width < 14) in sample groups (1 + 1 + 1 samples
            # and, for an L2-sized chunk of 4 channel blocks, 2 + 1), and one sample
            # too large for the kept scratch buffer
            ((3, 8, 40, 13), 144, 3, 1, 1, 1), ((3, 8, 24, 13), 72, 3, 1, 1, 1), ((1, 4, 150, 13), 400, 3, 1, 1, 1),
            # the whole-image walk in chunks of 4 channel blocks (the L2-sized expanded
            # copy, kChunkFloats) over 25 blocks, the last one partial
            ((1, 8, 50, 13), 392, 3, 1, 1, 1)]


@pytest.mark.parametrize("case", DW_CASES, ids=str)
@pytest.mark.parametrize("acts", [("relu", "relu"), ("hardswish", "hardswish"), ("identity", "relu6")], ids=str)
def test_pointwise_dwconv_matches_the_two_ops(case, acts):
    shape, hidden, k, s, p, d = case
    cin = shape[1]
    x = nhwc(*shape)
    w1, b1 = torch.randn(hidden, cin) / cin**0.5, torch.randn(hidden)
    wd, bd = torch.randn(hidden, 1, k, k) / k, torch.randn(hidden)
    for with_mean in (False, True):
        args = (acts[0], wd, bd, [s, s], [p, p], [d, d], acts[1], with_mean)
        ey, emean = reference.pointwise_dwconv(x, w1, b1, *args)
        for weight in (w1, pack_pointwise_weight(w1)):
            y, mean = pointwise_dw(x, weight, b1, *args)
            assert_same_layout(y, ey)
            assert_op_close(y, ey)
            assert_op_close(mean, emean)


def test_pointwise_dwconv_padding_ignores_what_the_scratch_held():
    """The small-image walk reuses a kept per-thread buffer and zeroes only the padding
    pixels it reads: fill the buffer with large values through one geometry, then run
    others whose padding falls where those values were."""
    big = nhwc(1, 8, 20, 13).abs_() + 1e3
    pointwise_dw(big, torch.ones(200, 8), torch.full((200,), 1e3), "relu", torch.ones(200, 1, 1, 1),
                 torch.zeros(200), [1, 1], [0, 0], [1, 1], "relu", False)
    for shape, hidden, k, s, p, d in [((1, 8, 7, 7), 48, 5, 1, 2, 1), ((2, 8, 14, 9), 40, 3, 2, 1, 1),
                                      ((1, 4, 6, 6), 24, 3, 1, 2, 2)]:
        x = nhwc(*shape)
        w1, b1 = torch.randn(hidden, shape[1]), torch.randn(hidden)
        wd, bd = torch.randn(hidden, 1, k, k), torch.randn(hidden)
        args = ("relu", wd, bd, [s, s], [p, p], [d, d], "hardswish", True)
        y, mean = pointwise_dw(x, pack_pointwise_weight(w1), b1, *args)
        ey, emean = reference.pointwise_dwconv(x, w1, b1, *args)
        assert_op_close(y, ey)
        assert_op_close(mean, emean)


@pytest.mark.parametrize("hidden", [16, 20])
def test_pointwise_dwconv_reads_tap_major_depthwise_weights(hidden):
    """A tap-major depthwise weight (fused_layers.tap_major) with a multiple of 16
    channels is read in place, any other layout is packed per call: same result."""
    from mnv3_kernels.models.fused_layers import tap_major

    x = nhwc(2, 8, 9, 9)
    w1, b1 = torch.randn(hidden, 8), torch.randn(hidden)
    wd, bd = torch.randn(hidden, 1, 5, 5), torch.randn(hidden)
    args = ("relu", [1, 1], [2, 2], [1, 1], "hardswish", True)
    expected = reference.pointwise_dwconv(x, w1, b1, args[0], wd, bd, *args[1:])
    for weight in (wd, tap_major(wd)):
        y, mean = pointwise_dw(x, pack_pointwise_weight(w1), b1, args[0], weight, bd, *args[1:])
        assert_op_close(y, expected[0])
        assert_op_close(mean, expected[1])


@pytest.mark.parametrize("cout,cin", [(1, 3), (16, 5), (17, 2), (40, 9)])
def test_pack_pointwise_weight_round_trips(cout, cin):
    w = torch.randn(cout, cin)
    panels = pack_pointwise_weight(w)
    assert panels.shape == (-(-cout // 16), cin, 16) and panels.is_contiguous()
    assert torch.equal(unpack_pointwise_weight(panels, cout), w)
    assert not panels.transpose(1, 2).reshape(-1, cin)[cout:].any()  # the padding channels are zero


# (x shape, Cout, k, stride, padding, dilation): the stem (3 -> 16, 3x3 stride 2 at
# an odd size), rows around the 12-pixel tile, several panels, no padding, a 1x1,
# dilation, and an input smaller than a tile.
CONV_CASES = [((1, 3, 37, 45), 16, 3, 2, 1, 1), ((2, 3, 9, 30), 20, 3, 1, 1, 1), ((1, 5, 12, 13), 40, 3, 1, 0, 1),
              ((1, 2, 7, 7), 3, 1, 1, 0, 1), ((1, 4, 11, 17), 16, 3, 1, 2, 2), ((1, 3, 4, 3), 8, 5, 2, 2, 1)]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("activation", ACTS)
def test_conv_bias_act_matches_reference_in_any_input_layout(case, activation):
    shape, cout, k, s, p, d = case
    base = torch.randn(*shape)
    w, b = torch.randn(cout, shape[1], k, k), torch.randn(cout)
    args = (w, b, [s, s], [p, p], [d, d], activation)
    expected = reference.conv_bias_act(base, *args)
    wide = torch.randn(shape[0], shape[1], shape[2], 2 * shape[3])[..., ::2]  # strided columns
    wide.copy_(base)
    for x in (base, base.contiguous(memory_format=torch.channels_last), wide):
        y = conv(x, *args)
        assert_same_layout(y, expected)  # channels-last whatever x's layout
        assert_op_close(y, expected)


# (N, C, Cr): MobileNetV3's widest and narrowest SE blocks at batch 1 (matrix-vector
# walks, partial panels and 128-column blocks), a batch (the register tiles), Cr = 0.
@pytest.mark.parametrize("n,c,cr", [(1, 960, 240), (1, 16, 8), (1, 72, 24), (3, 40, 10), (2, 130, 0)])
@pytest.mark.parametrize("gate", ["hardsigmoid", "sigmoid"])
def test_se_gate_matches_reference(n, c, cr, gate):
    pooled = torch.randn(n, c)
    w1, b1, w2, b2 = torch.randn(cr, c) / c**0.5, torch.randn(cr), torch.randn(c, cr) / max(cr, 1)**0.5, torch.randn(c)
    expected = reference.se_gate(pooled, w1, b1, w2, b2, gate)
    for k1, k2 in ((w1, w2), (pack_pointwise_weight(w1), pack_pointwise_weight(w2))):
        assert_op_close(se_gate(pooled, k1, b1, k2, b2, gate), expected)


SE_GATE_BAD = [
    ({"pooled": torch.randn(1, 8, 1, 1)}, "pooled must be a row-major float32 \\[N, C\\] matrix",
     "pooled must be a contiguous \\[N, C\\] matrix"),
    ({"w1": torch.randn(4, 9)}, "w1 must be a float32 \\[Cout, Cin\\] matrix with Cin = 8",
     "w1 must have shape \\[Cout, Cin\\] with Cin = 8"),
    ({"b1": torch.randn(5)}, "b1 must be a float32 \\[Cout\\] vector with Cout = 4", "w1 must have shape"),
    ({"w2": torch.randn(8, 5)}, "w2 must be a float32 \\[Cout, Cin\\] matrix with Cin = 4",
     "w2 must have shape \\[Cout, Cin\\] with Cin = 4"),
    ({"w2": torch.randn(7, 4), "b2": torch.randn(7)}, "w2 and b2 must have C = 8 output channels",
     "w2 and b2 must have C = 8 output channels"),
    ({"w1": torch.randn(2, 8, 16)}, "w1 given as panels must be a contiguous",
     "w1 given as panels must be a contiguous"),
    ({"gate": "relu"}, "gate must be one of", "gate must be one of"),
]


def _se_gate_args(**overrides):
    args = {"pooled": torch.randn(1, 8), "w1": torch.randn(4, 8), "b1": torch.randn(4), "w2": torch.randn(8, 4),
            "b2": torch.randn(8), "gate": "hardsigmoid"}
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,match,_", SE_GATE_BAD, ids=[str(list(c[0])) for c in SE_GATE_BAD])
def test_se_gate_bad_input_names_the_argument(overrides, match, _):
    with pytest.raises(RuntimeError, match=match):
        se_gate(**_se_gate_args(**overrides))


@pytest.mark.parametrize("overrides,_,match", SE_GATE_BAD, ids=[str(list(c[0])) for c in SE_GATE_BAD])
def test_se_gate_fake_kernel_checks_too(overrides, _, match):
    assert_fake_kernel_raises(se_gate, _se_gate_args(**overrides), ValueError, match)


def test_opcheck():
    x, w, b = nhwc(2, 6, 5, 4), torch.randn(10, 6), torch.randn(10)
    torch.library.opcheck(pointwise, (x, pack_pointwise_weight(w), b, "hardswish", torch.rand(2, 6), nhwc(2, 10, 5, 4)))
    torch.library.opcheck(pointwise, (torch.randn(3, 6), w, b, "relu"))
    wd, bd = torch.randn(10, 1, 3, 3), torch.randn(10)
    torch.library.opcheck(pointwise_dw, (x, w, b, "relu", wd, bd, [2, 2], [1, 1], [1, 1], "hardswish", True))
    torch.library.opcheck(conv, (torch.randn(2, 3, 9, 8), torch.randn(5, 3, 3, 3), torch.randn(5), [2, 2], [1, 1],
                                 [1, 1], "hardswish"))
    torch.library.opcheck(se_gate, (torch.randn(2, 20), pack_pointwise_weight(torch.randn(6, 20)), torch.randn(6),
                                    torch.randn(20, 6), torch.randn(20), "sigmoid"))


def test_backward_raises_a_clear_error():
    x = torch.randn(2, 4, requires_grad=True)
    y = pointwise(x, torch.randn(3, 4), torch.randn(3), "relu")
    with pytest.raises(RuntimeError, match="inference op and has no backward"):
        y.sum().backward()


def _pw_args(**overrides):
    args = {"x": nhwc(1, 4, 3, 3), "weight": torch.randn(8, 4), "bias": torch.randn(8), "activation": "relu",
            "scale": None, "residual": None}
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,match", [
    ({"x": torch.randn(1, 4, 3, 3)}, "x must be a channels-last dense"),  # NCHW
    ({"x": nhwc(1, 4, 3, 3).half()}, "x must be float32"),
    ({"x": torch.randn(4)}, "x must be a channels-last dense"),
    ({"weight": torch.randn(8, 5)}, "weight must be a float32 \\[Cout, Cin\\] matrix with Cin = 4"),
    ({"weight": torch.randn(8, 4).half()}, "weight and bias must be float32"),
    ({"weight": torch.randn(2, 4, 16)}, "weight given as panels must be a contiguous \\[ceil\\(Cout/16\\), Cin, 16\\] "
                                        "= \\[1, 4, 16\\]"),
    ({"weight": torch.randn(1, 16, 4).transpose(1, 2)}, "weight given as panels must be a contiguous"),
    ({"bias": torch.randn(7)}, "bias must be a float32 \\[Cout\\] vector with Cout = 8"),
    ({"activation": "gelu"}, "activation must be one of"),
    ({"scale": torch.rand(2, 4)}, "scale must be a row-major float32 \\[N, Cin\\]"),
    ({"residual": torch.randn(1, 8, 3, 3)}, "residual must be a tensor of the output's shape, layout and dtype"),
])
def test_pointwise_bad_input_names_the_argument(overrides, match):
    with pytest.raises(RuntimeError, match=match):
        pointwise(**_pw_args(**overrides))


@pytest.mark.parametrize("overrides,match", [
    ({"x": torch.randn(1, 4, 3, 3)}, "x must be channels-last dense"),
    ({"weight": torch.randn(8, 5)}, "weight must have shape \\[Cout, Cin\\] with Cin = 4"),
    ({"weight": torch.randn(2, 4, 16)}, "weight given as panels must be a contiguous \\[ceil\\(Cout/16\\), Cin, 16\\]"),
    ({"residual": torch.randn(1, 8, 3, 3)}, "residual must have the output's shape"),
    ({"scale": torch.rand(1, 5)}, "scale must be a contiguous \\[N, Cin\\]"),
])
def test_pointwise_fake_kernel_checks_too(overrides, match):
    """Under torch.compile / export the fake kernel raises the same kind of error."""
    assert_fake_kernel_raises(pointwise, _pw_args(**overrides), ValueError, match)


@pytest.mark.parametrize("overrides,match", [
    ({"dw_weight": torch.randn(9, 1, 3, 3)}, "dw_weight must have shape \\[C, 1, kh, kw\\] with C = 8"),
    ({"dw_weight": torch.randn(8, 1, 3, 1)}, "dw_weight must be a square kernel"),
    ({"dw_bias": torch.randn(3)}, "dw_bias must have shape \\[C\\] with C = 8"),
    ({"dilation": [9, 9], "x": nhwc(1, 4, 40, 40)}, "dilated span is at most 16 rows"),
    ({"padding": [0, 0], "x": nhwc(1, 4, 2, 2)}, "the output would be empty"),
    ({"dw_activation": "tanh"}, "activation must be one of"),
])
def test_pointwise_dwconv_bad_input_names_the_argument(overrides, match):
    args = {"x": nhwc(1, 4, 5, 5), "weight": torch.randn(8, 4), "bias": torch.randn(8), "activation": "relu",
            "dw_weight": torch.randn(8, 1, 3, 3), "dw_bias": torch.randn(8), "stride": [1, 1], "padding": [1, 1],
            "dilation": [1, 1], "dw_activation": "relu", "with_mean": False}
    args.update(overrides)
    with pytest.raises(RuntimeError, match=match):
        pointwise_dw(**args)


def _conv_args(**overrides):
    args = {"x": torch.randn(1, 3, 8, 8), "weight": torch.randn(16, 3, 3, 3), "bias": torch.randn(16),
            "stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "activation": "hardswish"}
    args.update(overrides)
    return args


CONV_BAD = [
    ({"x": torch.randn(1, 3, 8, 8).half()}, "x must be a float32 4-d tensor",
     "x must be float32 for the CPU kernel"),
    ({"x": torch.randn(3, 8, 8)}, "x must be a float32 4-d tensor", "x must be a 4-d tensor"),
    ({"weight": torch.randn(16, 4, 3, 3)}, "weight must be a float32 \\[Cout, Cin, kh, kw\\] tensor with Cin = 3",
     "weight must have shape \\[Cout, Cin, kh, kw\\] with Cin = 3"),
    ({"bias": torch.randn(15)}, "bias must be a float32 \\[Cout\\] vector with Cout = 16",
     "bias must have shape \\[Cout\\] with Cout = 16"),
    ({"stride": [0, 1]}, "stride must be positive", "stride must be positive"),
    ({"padding": [0, 0], "x": torch.randn(1, 3, 2, 2)}, "the output would be empty", "the output would be empty"),
    ({"activation": "gelu"}, "activation must be one of", "activation must be one of"),
]


@pytest.mark.parametrize("overrides,match,_", CONV_BAD, ids=[str(list(c[0])) for c in CONV_BAD])
def test_conv_bias_act_bad_input_names_the_argument(overrides, match, _):
    with pytest.raises(RuntimeError, match=match):
        conv(**_conv_args(**overrides))


@pytest.mark.parametrize("overrides,_,match", CONV_BAD, ids=[str(list(c[0])) for c in CONV_BAD])
def test_conv_bias_act_fake_kernel_checks_too(overrides, _, match):
    assert_fake_kernel_raises(conv, _conv_args(**overrides), (TypeError, ValueError), match)


_GUARD_PAGE_SCRIPT = r"""
import ctypes, mmap, torch, mnv3_kernels
libc = ctypes.CDLL(None, use_errno=True)
page = mmap.PAGESIZE
op = torch.ops.mnv3.pointwise_bias_act.default
from mnv3_kernels.layout import pack_pointwise_weight
for K, N, rows in [(40, 3, 5), (17, 1, 13), (24, 15, 2), (100, 7, 1), (33, 16, 3), (9, 40, 4)]:
    weight = torch.randn(N, K)
    panels = pack_pointwise_weight(weight)
    count = panels.numel()
    pages = (count * 4 + page - 1) // page + 1
    buf = mmap.mmap(-1, pages * page)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert libc.mprotect(ctypes.c_void_p(addr + (pages - 1) * page), page, 0) == 0
    flat = torch.frombuffer(buf, dtype=torch.float32, count=count, offset=(pages - 1) * page - count * 4)
    w = flat.view(panels.shape)  # the panels, their last float right before the guard page
    w.copy_(panels)
    x, b = torch.randn(rows, K), torch.randn(N)
    torch.testing.assert_close(op(x, w, b, "relu"), torch.relu(x @ weight.t() + b), rtol=1e-5, atol=1e-5)
    del flat, w
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses mprotect through libc")
def test_weights_are_never_read_past_their_end():
    """The weight panels end right before an inaccessible page: a read past their end
    (e.g. the last panel of a narrow layer, or a matrix-vector block) crashes the subprocess."""
    result = subprocess.run([sys.executable, "-c", _GUARD_PAGE_SCRIPT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, (result.returncode, result.stderr[-2000:])
