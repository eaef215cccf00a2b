"""The handwritten CUDA kernels against the reference: a sweep of shapes,
strides, layouts, dtypes and activations, opcheck, streams and CUDA-graph
capture.

The sweep runs on two targets: `cuda`, mnv3_kernels._C_cuda on a GPU
(torch.ops.mnv3.* on CUDA tensors; skipped without a GPU, and with a GPU a
missing CUDA kernel fails, tests/test_cuda_build.py says why), and
`emulated`, the same .cu sources compiled for the CUDA emulator
(torch.ops.mnv3_emulated.* on CPU tensors, mnv3_kernels/emulated.py; skipped
unless built with MNV3_BUILD_EMULATED=1, which CI sets).  Streams and graph
capture need a GPU."""

import itertools
from dataclasses import dataclass

import pytest
import torch

from mnv3_kernels import emulated, ops, reference
from op_cases import (LAYOUTS, check_conv, check_dwconv, check_pointwise, check_pointwise_dwconv, check_se,
                      check_se_gate, dwconv_params, make_x, missed_launch_branches, pointwise_params, se_params)
from tolerances import assert_op_close

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")
LOWP = [torch.float16, torch.bfloat16]


@dataclass(frozen=True)
class Target:
    name: str
    device: str  # where the op's tensors live
    namespace: str  # torch.ops.<namespace>

    @property
    def ops(self):
        return getattr(torch.ops, self.namespace)


CUDA = Target("cuda", "cuda", "mnv3")
EMULATED = Target("emulated", "cpu", emulated.NAMESPACE)


@pytest.fixture(params=[
    pytest.param(CUDA, marks=[pytest.mark.cuda, requires_gpu], id="cuda"),
    pytest.param(EMULATED, id="emulated", marks=pytest.mark.skipif(
        not emulated.available(), reason=f"the emulated CUDA kernels: {emulated.STATUS.reason}")),
])
def target(request):
    return request.param


# The CPU op sweep's axes, pruned: every (N, C, H=W) below meets every
# geometry; activations, layouts and dtypes rotate over the cases instead of
# multiplying them, so each value still meets each kernel path.
SIZES = [(0, 8, 7), (1, 1, 1), (1, 13, 15), (3, 72, 14), (1, 960, 7), (1, 8, 113), (3, 13, 2)]
GEOMETRIES = list(itertools.product((3, 5), (1, 2), (1, 2)))  # k, stride, dilation


def _dwconv_cases():
    cases = []
    for i, ((n, c, hw), (k, s, d)) in enumerate(itertools.product(SIZES, GEOMETRIES)):
        padding = k // 2 * d
        if ops.conv_out_size(hw, k, s, padding, d) < 1:
            continue
        layout = LAYOUTS[i % len(LAYOUTS)]
        activation = ops.ACTIVATIONS[(i // len(LAYOUTS)) % len(ops.ACTIVATIONS)]
        cases.append(pytest.param((n, c, hw, hw), k, s, d, padding, layout, activation,
                                  id=f"{n}x{c}x{hw}-k{k}s{s}d{d}-{layout}-{activation}"))
    return cases


DWCONV_CASES = _dwconv_cases()


def _gen(*key):
    return torch.Generator().manual_seed(hash(key) % 2**31)


@pytest.mark.parametrize("shape,k,stride,dilation,padding,layout,activation", DWCONV_CASES)
def test_dwconv_fp32(shape, k, stride, dilation, padding, layout, activation, target):
    g = _gen(shape, k, stride, dilation, layout)
    x = make_x(shape, torch.float32, target.device, layout, g)
    w, b = dwconv_params(shape[1], k, torch.float32, target.device, g)
    check_dwconv(x, w, b, stride, padding, dilation, activation, with_mean=True, ops=target.ops)


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("shape,k,stride,dilation,padding,layout,activation", DWCONV_CASES[::3])
def test_dwconv_lowp(shape, k, stride, dilation, padding, layout, activation, dtype, target):
    g = _gen(shape, k, stride, dilation, layout, str(dtype))
    x = make_x(shape, dtype, target.device, layout, g)
    w, b = dwconv_params(shape[1], k, dtype, target.device, g)
    check_dwconv(x, w, b, stride, padding, dilation, activation, with_mean=True, ops=target.ops)


@pytest.mark.parametrize("dtype", [torch.float32] + LOWP, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dwconv_without_mean(layout, dtype, target):
    g = _gen(layout, str(dtype))
    x = make_x((2, 24, 19, 11), dtype, target.device, layout, g)
    w, b = dwconv_params(24, 3, dtype, target.device, g)
    check_dwconv(x, w, b, 1, 1, 1, "relu6", with_mean=False, ops=target.ops)


@pytest.mark.parametrize("k,stride,dilation,padding",
                         [(1, 1, 1, 0), (7, 3, 1, 3), (3, 1, 1, 0), (5, 2, 1, 4), (41, 1, 1, 20)])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_dwconv_other_geometries(k, stride, dilation, padding, layout, target):
    """Kernel sizes, strides and paddings off the unrolled tiles: the any-geometry path."""
    g = _gen(k, stride, dilation, padding, layout)
    x = make_x((2, 16, 23, 17), torch.float32, target.device, layout, g)
    w, b = dwconv_params(16, k, torch.float32, target.device, g)
    check_dwconv(x, w, b, stride, padding, dilation, "hardswish", ops=target.ops)


@pytest.mark.parametrize("shape, dtype", [
    ((2, 16, 224, 224), torch.float16),  # one channel group, 16-byte vectors
    ((2, 136, 40, 40), torch.float32),   # two channel groups (34 vectors of 4): a counter per (n, group)
    ((3, 35, 20, 20), torch.float32),    # two channel groups of scalars, three samples
])
def test_dwconv_mean_over_many_chunks(shape, dtype, target):
    """Planes big enough that the squeeze spans many blocks, finished by the last of each (n, group)."""
    g = _gen("chunks")
    x = make_x(shape, dtype, target.device, "channels_last", g)
    w, b = dwconv_params(shape[1], 3, dtype, target.device, g)
    check_dwconv(x, w, b, 1, 1, 1, "hardswish", ops=target.ops)


def test_dwconv_deterministic(target):
    g = _gen("det")
    x = make_x((4, 64, 112, 112), torch.float16, target.device, "channels_last", g)
    w, b = dwconv_params(64, 3, torch.float16, target.device, g)
    args = (w, b, [1, 1], [1, 1], [1, 1], "relu", True)
    first = target.ops.dwconv_bias_act(x, *args)
    for _ in range(3):
        again = target.ops.dwconv_bias_act(x, *args)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_dwconv_weight_views(target):
    """Weights and bias with any strides (e.g. slices of a bigger parameter)."""
    g = _gen("wviews")
    x = make_x((2, 24, 9, 9), torch.float32, target.device, "channels_last", g)
    w = torch.randn(24, 1, 3, 6, generator=g).to(target.device)[:, :, :, ::2]
    b = torch.randn(48, generator=g).to(target.device)[::2]
    check_dwconv(x, w, b, 1, 1, 1, "identity", ops=target.ops)


SE_CASES = [  # (N, C, Cr, H, W): Cr = 6 and C = 13 take the excite's scalar weight rows
    (1, 16, 8, 56, 56), (3, 72, 24, 28, 28), (2, 960, 240, 7, 7), (1, 13, 8, 5, 3), (0, 8, 8, 4, 4), (2, 40, 16, 1, 1),
    (2, 24, 6, 3, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32] + LOWP, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", ops.GATES)
@pytest.mark.parametrize("n,c,cr,h,w", SE_CASES)
def test_se_excite_scale(n, c, cr, h, w, gate, layout, dtype, target):
    g = _gen(n, c, cr, h, w, layout, str(dtype))
    x = make_x((n, c, h, w), dtype, target.device, layout, g)
    pooled_dtype = torch.float32 if (c + h) % 2 else dtype  # both pooled dtypes the schema allows
    pooled = x.float().mean(dim=(2, 3)).to(pooled_dtype)
    check_se(x, pooled, *se_params(c, cr, dtype, target.device, g), gate, ops=target.ops)


@pytest.mark.parametrize("dtype", [torch.float32] + LOWP, ids=str)
@pytest.mark.parametrize("gate", ops.GATES)
@pytest.mark.parametrize("n,c,cr", [(n, c, cr) for n, c, cr, _h, _w in SE_CASES])
def test_se_gate(n, c, cr, gate, dtype, target):
    """The excite alone (the projection's input scale): the same fc kernels as se_excite_scale."""
    g = _gen("se_gate", n, c, cr, str(dtype))
    pooled_dtype = torch.float32 if (c + n) % 2 else dtype  # both pooled dtypes the kernel reads
    pooled = torch.randn(n, c, generator=g).to(device=target.device, dtype=pooled_dtype)
    check_se_gate(pooled, *se_params(c, cr, dtype, target.device, g), gate, ops=target.ops)


def test_se_gate_refuses_bad_input(target):
    pooled = torch.randn(2, 8, device=target.device)
    w1, b1, w2, b2 = se_params(8, 4, torch.float16, target.device)
    with pytest.raises(RuntimeError, match="SE weights must have the dtype of w1"):
        target.ops.se_gate(pooled, w1, b1.float(), w2, b2, "sigmoid")
    with pytest.raises(RuntimeError, match="pooled must be float32 or have the dtype of w1"):
        target.ops.se_gate(pooled.bfloat16(), w1, b1, w2, b2, "sigmoid")
    with pytest.raises(RuntimeError, match="w2 must have shape \\[C, Cr\\] = \\[8, 4\\]"):
        target.ops.se_gate(pooled, w1, b1, w2[:, :3], b2, "sigmoid")
    with pytest.raises(RuntimeError, match="gate must be one of"):
        target.ops.se_gate(pooled, w1, b1, w2, b2, "relu")


def test_se_weight_views(target):
    g = _gen("se views")
    x = make_x((2, 32, 6, 6), torch.float32, target.device, "channels_last", g)
    w1, b1, w2, b2 = se_params(32, 8, torch.float32, target.device, g)
    pooled = torch.randn(32, 2, generator=g).to(target.device).t()  # transposed view
    check_se(x, pooled, w1.t().contiguous().t(), b1, w2.t().contiguous().t(), b2, "sigmoid", ops=target.ops)


# ------------------------------------------------------------------ pointwise_bias_act
# (x shape, Cout, x layout, scale, residual): rows and output channels over
# several 64-wide tiles and partial ones, samples straddling a row tile (the
# scale's sample index), K not a multiple of the 32-wide step; K % 8 == 0
# stages 16-byte vectors in every dtype, K = 12 in fp32 only, K = 13 and the
# odd storage offset never; 2-d x is a Linear; K = 480 and 300 on one or two
# tiles split K over 3 and 2 blocks (300: the last split ends mid-step).  Dtypes
# and activations rotate.
PW_SHAPES = [
    ((2, 40, 9, 9), 72, "channels_last", True, False),
    ((3, 72, 5, 5), 100, "channels_last", True, True),
    ((1, 13, 7, 7), 24, "channels_last", False, True),
    ((2, 24, 6, 6), 16, "channels_last_offset", True, True),
    ((2, 12, 3, 3), 12, "channels_last", True, False),
    ((5, 96), 130, "2d", True, False),
    ((1, 12), 7, "2d", False, True),
    ((0, 16, 4, 4), 8, "channels_last", True, True),
    ((1, 480, 3, 5), 40, "channels_last", True, True),
    ((3, 300), 70, "2d", False, True),
]
PW_CASES = [
    pytest.param(shape, cout, lay, sc, res, dtype, ops.ACTIVATIONS[(i + j) % len(ops.ACTIVATIONS)],
                 id=f"{'x'.join(map(str, shape))}-{cout}-{lay}-{'scale' if sc else 'noscale'}-"
                    f"{'res' if res else 'nores'}-{str(dtype)[6:]}")
    for i, (shape, cout, lay, sc, res) in enumerate(PW_SHAPES)
    for j, dtype in enumerate([torch.float32] + LOWP)
]


def _pw_inputs(shape, cout, lay, with_scale, with_residual, dtype, device, g):
    if lay == "2d":
        x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    else:
        x = make_x(shape, dtype, device, lay, g)
    w, b = pointwise_params(shape[1], cout, dtype, device, g)
    scale = torch.rand(shape[0], shape[1], generator=g).to(device) if with_scale else None
    residual = None
    if with_residual:
        out = (shape[0], cout, *shape[2:])
        residual = torch.randn(out, generator=g).to(device=device, dtype=dtype)
        if lay != "2d":
            residual = residual.contiguous(memory_format=torch.channels_last)
    return x, w, b, scale, residual


@pytest.mark.parametrize("shape,cout,lay,with_scale,with_residual,dtype,activation", PW_CASES)
def test_pointwise_bias_act(shape, cout, lay, with_scale, with_residual, dtype, activation, target):
    g = _gen("pw", shape, cout, lay, str(dtype))
    x, w, b, scale, residual = _pw_inputs(shape, cout, lay, with_scale, with_residual, dtype, target.device, g)
    check_pointwise(x, w, b, activation, scale, residual, ops=target.ops)


def test_pointwise_weight_view(target):
    """A transposed (non-contiguous) weight is read as its values, not its storage."""
    g = _gen("pw view")
    x = make_x((2, 16, 5, 5), torch.float16, target.device, "channels_last", g)
    w, b = pointwise_params(16, 24, torch.float16, target.device, g)
    check_pointwise(x, w.t().contiguous().t(), b, "relu", ops=target.ops)


def test_pointwise_refuses_bad_input(target):
    x = make_x((1, 8, 3, 3), torch.float16, target.device, "channels_last")
    w, b = pointwise_params(8, 16, torch.float16, target.device)
    with pytest.raises(RuntimeError, match="the CUDA kernel reads no panels"):
        target.ops.pointwise_bias_act(x, torch.zeros(1, 8, 16, dtype=x.dtype, device=x.device), b, "relu")
    with pytest.raises(RuntimeError, match="weight must be a \\[Cout, Cin\\] matrix with Cin = 8 and x's dtype"):
        target.ops.pointwise_bias_act(x, w.float(), b, "relu")
    with pytest.raises(RuntimeError, match="x must be a channels-last dense 4-d tensor"):
        target.ops.pointwise_bias_act(x.contiguous(), w, b, "relu")
    with pytest.raises(RuntimeError, match="scale must be a row-major float32"):
        target.ops.pointwise_bias_act(x, w, b, "relu", torch.ones(1, 8, dtype=x.dtype, device=x.device))
    with pytest.raises(RuntimeError, match="residual must be a tensor of the output's shape, layout and dtype"):
        target.ops.pointwise_bias_act(x, w, b, "relu", None, torch.zeros(1, 16, 3, 3, device=x.device))
    with pytest.raises(RuntimeError, match="activation must be one of"):
        target.ops.pointwise_bias_act(x, w, b, "gelu")


# ------------------------------------------------------------------ pointwise_dwconv (expand + depthwise)
# (x shape, expanded C, k, stride, dilation, dtype): Large's own geometries (3x3 and
# 5x5, strides 1 and 2, 16 -> 64 at 56x56 over many tiles, 160 -> 960 at 7x7: one
# tile a sample, 30 channel groups, Cin over several 32-wide steps), a dilated 5x5
# and a 4x4 of span 10 (the any-geometry path), Cin = 13 (scalar staging), C not a
# multiple of the 32-channel group, a 1x2 image (a 1x1 one has no channels-last
# strides of its own), N = 0.
PWDW_CASES = [
    ((2, 16, 9, 11), 40, 3, 1, 1, torch.float32),
    ((1, 16, 56, 56), 64, 3, 1, 1, torch.float16),
    ((1, 24, 14, 14), 72, 5, 2, 1, torch.float16),
    ((1, 160, 7, 7), 960, 5, 1, 1, torch.bfloat16),
    ((3, 13, 7, 7), 33, 3, 2, 1, torch.bfloat16),
    ((1, 16, 9, 9), 24, 5, 1, 2, torch.float32),
    ((2, 8, 12, 10), 16, 4, 1, 3, torch.float16),
    ((2, 8, 1, 2), 16, 3, 2, 1, torch.float32),
    ((0, 8, 4, 4), 16, 3, 1, 1, torch.float32),
]


@pytest.mark.parametrize("with_mean", [True, False], ids=["mean", "nomean"])
@pytest.mark.parametrize("shape,c,k,stride,dilation,dtype", PWDW_CASES,
                         ids=["x".join(map(str, p[0])) + f"-{p[1]}-k{p[2]}s{p[3]}d{p[4]}-{str(p[5])[6:]}"
                              for p in PWDW_CASES])
def test_pointwise_dwconv(shape, c, k, stride, dilation, dtype, with_mean, target):
    g = _gen("pwdw", shape, c, k, stride, dilation, str(dtype))
    x = make_x(shape, dtype, target.device, "channels_last", g)
    w, b = pointwise_params(shape[1], c, dtype, target.device, g)
    dw_w, dw_b = dwconv_params(c, k, dtype, target.device, g)
    act, dw_act = ops.ACTIVATIONS[(c + k) % len(ops.ACTIVATIONS)], ops.ACTIVATIONS[(c + stride) % len(ops.ACTIVATIONS)]
    padding = (k - 1) * dilation // 2
    check_pointwise_dwconv(x, w, b, act, dw_w, dw_b, stride, padding, dilation, dw_act, with_mean, ops=target.ops)


def test_pointwise_dwconv_refuses_bad_input(target):
    x = make_x((1, 8, 12, 12), torch.float16, target.device, "channels_last")
    w, b = pointwise_params(8, 16, torch.float16, target.device)
    dw_w, dw_b = dwconv_params(16, 3, torch.float16, target.device)
    args = ([1, 1], [1, 1], [1, 1], "relu", True)
    with pytest.raises(RuntimeError, match="x must be a float32, float16 or bfloat16 channels-last dense 4-d"):
        target.ops.pointwise_dwconv(x.contiguous(), w, b, "relu", dw_w, dw_b, *args)
    with pytest.raises(RuntimeError, match="the CUDA kernel reads no panels"):
        target.ops.pointwise_dwconv(x, w.float(), b, "relu", dw_w, dw_b, *args)
    with pytest.raises(RuntimeError, match="dw_weight and dw_bias must have x's dtype"):
        target.ops.pointwise_dwconv(x, w, b, "relu", dw_w.float(), dw_b, *args)
    with pytest.raises(RuntimeError, match="dw_weight must have shape \\[C, 1, kh, kw\\] with C = 16"):
        target.ops.pointwise_dwconv(x, w, b, "relu", dw_w[:8], dw_b, *args)
    # The span bound ops.PWDW_MAX_SPAN["cuda"] is the kernel's: the span itself runs
    # (test_pointwise_dwconv, 4x4 with dilation 3), one more is refused by both checks.
    span = ops.PWDW_MAX_SPAN["cuda"]
    big_w, _ = dwconv_params(16, span + 1, torch.float16, target.device)
    too_large = (x, w, b, "relu", big_w, dw_b, [1, 1], [span // 2] * 2, [1, 1], "relu", True)
    with pytest.raises(RuntimeError, match="too large for the CUDA kernel"):
        target.ops.pointwise_dwconv(*too_large)
    with pytest.raises(ValueError, match=f"may span at most {span} rows on the CUDA kernel"):
        ops.check_pointwise_dwconv_args(*too_large[:-1], kernel="cuda")


# ------------------------------------------------------------------ conv_bias_act (the stem)
# (x shape, Cout, k, stride, dilation, x layout): the stem, Cout not a multiple of
# the 8 channels a thread computes, odd sizes, any x layout, N = 0.
CONV_CASES = [
    ((1, 3, 17, 19), 16, 3, 2, 1, "nchw"),
    ((2, 3, 9, 8), 13, 3, 1, 2, "channels_last"),
    ((1, 5, 7, 7), 24, 5, 2, 1, "strided_view"),
    ((0, 3, 8, 8), 16, 3, 2, 1, "nchw"),
]


@pytest.mark.parametrize("dtype", [torch.float32] + LOWP, ids=str)
@pytest.mark.parametrize("shape,cout,k,stride,dilation,layout", CONV_CASES,
                         ids=["x".join(map(str, c[0])) + f"-{c[1]}-k{c[2]}s{c[3]}d{c[4]}-{c[5]}" for c in CONV_CASES])
def test_conv_bias_act(shape, cout, k, stride, dilation, layout, dtype, target):
    g = _gen("conv", shape, cout, k, str(dtype))
    x = make_x(shape, dtype, target.device, layout, g)
    w = (torch.randn(cout, shape[1], k, k, generator=g) / (shape[1] * k * k) ** 0.5).to(target.device, dtype)
    b = torch.randn(cout, generator=g).to(target.device, dtype)
    activation = ops.ACTIVATIONS[(cout + k) % len(ops.ACTIVATIONS)]
    check_conv(x, w, b, stride, k // 2 * dilation, dilation, activation, ops=target.ops)


def test_conv_bias_act_refuses_bad_input(target):
    x = torch.randn(1, 3, 8, 8, device=target.device, dtype=torch.float16)
    w, b = torch.randn(16, 3, 3, 3, device=target.device), torch.randn(16, device=target.device)
    with pytest.raises(RuntimeError, match="weight must be a \\[Cout, Cin, kh, kw\\] tensor of x's dtype"):
        target.ops.conv_bias_act(x, w, b.half(), [2, 2], [1, 1], [1, 1], "relu")
    with pytest.raises(RuntimeError, match="the output would be empty"):
        target.ops.conv_bias_act(x, w.half(), b.half(), [1, 1], [0, 0], [5, 5], "relu")
    with pytest.raises(RuntimeError, match="activation must be one of"):
        target.ops.conv_bias_act(x, w.half(), b.half(), [1, 1], [1, 1], [1, 1], "gelu")


# ------------------------------------------------------------------ opcheck
OPCHECK_SAMPLES = [
    (op, layout, dtype, stride_act)
    for layout, dtype in [("channels_last", torch.float32), ("nchw", torch.float16), ("channels_last", torch.bfloat16)]
    for op, stride_act in [("dwconv_bias_act", (2, "hardswish", True)), ("dwconv_bias_act", (1, "relu", False)),
                           ("se_excite_scale", None), ("pointwise_bias_act", None), ("pointwise_dwconv", None)]
    if not op.startswith("pointwise") or layout == "channels_last"  # they read channels-last x only
]


@pytest.mark.parametrize("op,layout,dtype,dw_args", OPCHECK_SAMPLES,
                         ids=[f"{o}-{l}-{d}-{a}" for o, l, d, a in OPCHECK_SAMPLES])
def test_opcheck(op, layout, dtype, dw_args, target):
    g = _gen("opcheck", op, layout, str(dtype))
    x = make_x((2, 16, 9, 9), dtype, target.device, layout, g)
    if op == "dwconv_bias_act":
        stride, activation, with_mean = dw_args
        w, b = dwconv_params(16, 3, dtype, target.device, g)
        args = (x, w, b, [stride] * 2, [1, 1], [1, 1], activation, with_mean)
    elif op == "se_excite_scale":
        args = (x, x.float().mean(dim=(2, 3)), *se_params(16, 8, dtype, target.device, g), "hardsigmoid")
    elif op == "pointwise_dwconv":
        w, b = pointwise_params(16, 40, dtype, target.device, g)
        dw_w, dw_b = dwconv_params(40, 5, dtype, target.device, g)
        args = (x, w, b, "hardswish", dw_w, dw_b, [2, 2], [2, 2], [1, 1], "relu", True)
    else:
        w, b = pointwise_params(16, 24, dtype, target.device, g)
        residual = make_x((2, 24, 9, 9), dtype, target.device, layout, g)
        args = (x, w, b, "hardswish", torch.rand(2, 16, generator=g).to(target.device), residual)
    torch.library.opcheck(getattr(target.ops, op).default, args)


# ------------------------------------------------------------------ streams and graphs
@pytest.mark.cuda
@requires_gpu
def test_runs_on_the_current_stream():
    """The op must wait for a producer queued on the same non-default stream."""
    g = _gen("stream")
    src = make_x((2, 32, 56, 56), torch.float32, "cuda", "channels_last", g)
    w, b = dwconv_params(32, 3, torch.float32, "cuda", g)
    pooled = torch.rand(2, 32, generator=g).to("cuda")
    se_w = se_params(32, 8, torch.float32, "cuda", g)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = torch.zeros_like(src)
        torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU time before the producer writes x
        x.copy_(src)
        y, mean = torch.ops.mnv3.dwconv_bias_act(x, w, b, [1, 1], [1, 1], [1, 1], "hardswish", True)
        z = torch.ops.mnv3.se_excite_scale(x, pooled, *se_w, "hardsigmoid")
    side.synchronize()
    ref_y, ref_mean = reference.dwconv_bias_act(src, w, b, [1, 1], [1, 1], [1, 1], "hardswish", True)
    assert_op_close(y, ref_y)
    assert_op_close(mean, ref_mean)
    assert_op_close(z, reference.se_excite_scale(src, pooled, *se_w, "hardsigmoid"))


@pytest.mark.cuda
@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_graph_capture_and_replay(dtype):
    g = _gen("graph", str(dtype))
    x = make_x((2, 72, 56, 56), dtype, "cuda", "channels_last", g)  # big enough for a squeeze over many blocks
    w, b = dwconv_params(72, 5, dtype, "cuda", g)
    se_w = se_params(72, 24, dtype, "cuda", g)

    def step():
        y, mean = torch.ops.mnv3.dwconv_bias_act(x, w, b, [1, 1], [2, 2], [1, 1], "hardswish", True)
        return torch.ops.mnv3.se_excite_scale(y, mean, *se_w, "hardsigmoid"), mean

    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        step()
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, mean = step()
    for _ in range(2):  # replay on new inputs, written in place
        x.copy_(make_x(x.shape, dtype, "cuda", "channels_last", g))
        graph.replay()
        torch.cuda.synchronize()
        expected_out, expected_mean = step()
        assert torch.equal(out, expected_out) and torch.equal(mean, expected_mean)


def test_bad_input_raises_instead_of_crashing(target):
    x = torch.randn(1, 8, 5, 5, device=target.device)
    w, b = dwconv_params(8, 3, torch.float32, target.device)
    with pytest.raises(RuntimeError, match="weight must have shape"):
        target.ops.dwconv_bias_act(x, w[:4], b, [1, 1], [1, 1], [1, 1], "relu", True)
    if target.device == "cuda":
        with pytest.raises(RuntimeError, match="must be on the same device"):
            target.ops.dwconv_bias_act(x, w.cpu(), b, [1, 1], [1, 1], [1, 1], "relu", True)
    with pytest.raises(RuntimeError, match="too large"):
        big_w = torch.randn(8, 1, 111, 111, device=target.device)  # > 12k taps: no room in shared memory
        target.ops.dwconv_bias_act(x.contiguous(memory_format=torch.channels_last), big_w, b,
                                   [1, 1], [55, 55], [1, 1], "relu", True)
    with pytest.raises(RuntimeError, match="pooled must have shape"):
        target.ops.se_excite_scale(x, torch.zeros(1, 4, device=target.device),
                                   *se_params(8, 4, torch.float32, target.device), "sigmoid")


# ------------------------------------------------------------------ launch branches (emulated)
# Every launch the emulated sweep above ran, as (kernel, grid, block, dynamic smem
# bytes); the kernel names carry the launch branch (check_launch in csrc/cuda/).
_EMULATED_LAUNCHES: list = []
_EMULATED_TESTS_RUN: set = set()


@pytest.fixture(autouse=True)
def _record_emulated_launches(request):
    on_emulator = ("target" in request.fixturenames and emulated.available()
                   and request.node.callspec.params.get("target") is EMULATED)
    if on_emulator:
        emulated.module().launch_log()  # drop what earlier tests launched
    yield
    if on_emulator:
        _EMULATED_LAUNCHES.extend(emulated.module().launch_log())
        _EMULATED_TESTS_RUN.add(request.node.nodeid)


def test_emulated_sweep_reaches_every_launch_branch(request):
    """Runs last in this file: the emulated sweep above must have launched every
    branch of LAUNCH_BRANCHES, and every launch must have been checked (named)."""
    if not emulated.available():
        pytest.skip(f"the emulated CUDA kernels: {emulated.STATUS.reason}")
    sweep = {item.nodeid for item in request.session.items
             if item.module is request.module and getattr(item, "callspec", None)
             and item.callspec.params.get("target") is EMULATED}
    if not sweep or not sweep <= _EMULATED_TESTS_RUN:
        pytest.skip(f"the emulated sweep did not run whole in this session ({len(_EMULATED_TESTS_RUN & sweep)} "
                    f"of {len(sweep)} tests)")
    missed = missed_launch_branches(_EMULATED_LAUNCHES)
    assert not missed, f"the emulated sweep never reached: {missed}"
