"""The handwritten CUDA kernels (mnv3_kernels._C_cuda) against the reference:
a sweep of shapes, strides, layouts, dtypes and activations, opcheck, streams
and CUDA-graph capture.  Every test needs a GPU and is skipped without one;
with a GPU, a missing CUDA kernel fails (tests/test_cuda_build.py says why)."""

import itertools

import pytest
import torch

from mnv3_kernels import ops, reference
from op_cases import LAYOUTS, check_dwconv, check_se, dwconv_params, make_x, se_params
from tolerances import assert_op_close

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)"),
]
DEV = "cuda"
LOWP = [torch.float16, torch.bfloat16]

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
def test_dwconv_fp32(shape, k, stride, dilation, padding, layout, activation):
    g = _gen(shape, k, stride, dilation, layout)
    x = make_x(shape, torch.float32, DEV, layout, g)
    w, b = dwconv_params(shape[1], k, torch.float32, DEV, g)
    check_dwconv(x, w, b, stride, padding, dilation, activation, with_mean=True)


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("shape,k,stride,dilation,padding,layout,activation", DWCONV_CASES[::3])
def test_dwconv_lowp(shape, k, stride, dilation, padding, layout, activation, dtype):
    g = _gen(shape, k, stride, dilation, layout, str(dtype))
    x = make_x(shape, dtype, DEV, layout, g)
    w, b = dwconv_params(shape[1], k, dtype, DEV, g)
    check_dwconv(x, w, b, stride, padding, dilation, activation, with_mean=True)


@pytest.mark.parametrize("dtype", [torch.float32] + LOWP, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dwconv_without_mean(layout, dtype):
    g = _gen(layout, str(dtype))
    x = make_x((2, 24, 19, 11), dtype, DEV, layout, g)
    w, b = dwconv_params(24, 3, dtype, DEV, g)
    check_dwconv(x, w, b, 1, 1, 1, "relu6", with_mean=False)


@pytest.mark.parametrize("k,stride,dilation,padding",
                         [(1, 1, 1, 0), (7, 3, 1, 3), (3, 1, 1, 0), (5, 2, 1, 4), (41, 1, 1, 20)])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_dwconv_other_geometries(k, stride, dilation, padding, layout):
    """Kernel sizes, strides and paddings off the unrolled tiles: the any-geometry path."""
    g = _gen(k, stride, dilation, padding, layout)
    x = make_x((2, 16, 23, 17), torch.float32, DEV, layout, g)
    w, b = dwconv_params(16, k, torch.float32, DEV, g)
    check_dwconv(x, w, b, stride, padding, dilation, "hardswish")


def test_dwconv_mean_over_many_chunks():
    """A plane big enough that the squeeze goes through the partial-sum pass, in fp16."""
    g = _gen("chunks")
    x = make_x((2, 16, 224, 224), torch.float16, DEV, "channels_last", g)
    w, b = dwconv_params(16, 3, torch.float16, DEV, g)
    check_dwconv(x, w, b, 1, 1, 1, "hardswish")


def test_dwconv_deterministic():
    g = _gen("det")
    x = make_x((4, 64, 112, 112), torch.float16, DEV, "channels_last", g)
    w, b = dwconv_params(64, 3, torch.float16, DEV, g)
    args = (w, b, [1, 1], [1, 1], [1, 1], "relu", True)
    first = torch.ops.mnv3.dwconv_bias_act(x, *args)
    for _ in range(3):
        again = torch.ops.mnv3.dwconv_bias_act(x, *args)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_dwconv_weight_views():
    """Weights and bias with any strides (e.g. slices of a bigger parameter)."""
    g = _gen("wviews")
    x = make_x((2, 24, 9, 9), torch.float32, DEV, "channels_last", g)
    w = torch.randn(24, 1, 3, 6, generator=g).to(DEV)[:, :, :, ::2]
    b = torch.randn(48, generator=g).to(DEV)[::2]
    check_dwconv(x, w, b, 1, 1, 1, "identity")


SE_CASES = [  # (N, C, Cr, H, W)
    (1, 16, 8, 56, 56), (3, 72, 24, 28, 28), (2, 960, 240, 7, 7), (1, 13, 8, 5, 3), (0, 8, 8, 4, 4), (2, 40, 16, 1, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32] + LOWP, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", ops.GATES)
@pytest.mark.parametrize("n,c,cr,h,w", SE_CASES)
def test_se_excite_scale(n, c, cr, h, w, gate, layout, dtype):
    g = _gen(n, c, cr, h, w, layout, str(dtype))
    x = make_x((n, c, h, w), dtype, DEV, layout, g)
    pooled_dtype = torch.float32 if (c + h) % 2 else dtype  # both pooled dtypes the schema allows
    pooled = x.float().mean(dim=(2, 3)).to(pooled_dtype)
    check_se(x, pooled, *se_params(c, cr, dtype, DEV, g), gate)


def test_se_weight_views():
    g = _gen("se views")
    x = make_x((2, 32, 6, 6), torch.float32, DEV, "channels_last", g)
    w1, b1, w2, b2 = se_params(32, 8, torch.float32, DEV, g)
    pooled = torch.randn(32, 2, generator=g).to(DEV).t()  # transposed view
    check_se(x, pooled, w1.t().contiguous().t(), b1, w2.t().contiguous().t(), b2, "sigmoid")


# ------------------------------------------------------------------ opcheck
OPCHECK_SAMPLES = [
    (op, layout, dtype, stride_act)
    for layout, dtype in [("channels_last", torch.float32), ("nchw", torch.float16), ("channels_last", torch.bfloat16)]
    for op, stride_act in [("dwconv_bias_act", (2, "hardswish", True)), ("dwconv_bias_act", (1, "relu", False)),
                           ("se_excite_scale", None)]
]


@pytest.mark.parametrize("op,layout,dtype,dw_args", OPCHECK_SAMPLES,
                         ids=[f"{o}-{l}-{d}-{a}" for o, l, d, a in OPCHECK_SAMPLES])
def test_opcheck(op, layout, dtype, dw_args):
    g = _gen("opcheck", op, layout, str(dtype))
    x = make_x((2, 16, 9, 9), dtype, DEV, layout, g)
    if op == "dwconv_bias_act":
        stride, activation, with_mean = dw_args
        w, b = dwconv_params(16, 3, dtype, DEV, g)
        args = (x, w, b, [stride] * 2, [1, 1], [1, 1], activation, with_mean)
    else:
        args = (x, x.float().mean(dim=(2, 3)), *se_params(16, 8, dtype, DEV, g), "hardsigmoid")
    torch.library.opcheck(getattr(torch.ops.mnv3, op).default, args)


# ------------------------------------------------------------------ streams and graphs
def test_runs_on_the_current_stream():
    """The op must wait for a producer queued on the same non-default stream."""
    g = _gen("stream")
    src = make_x((2, 32, 56, 56), torch.float32, DEV, "channels_last", g)
    w, b = dwconv_params(32, 3, torch.float32, DEV, g)
    pooled = torch.rand(2, 32, generator=g).to(DEV)
    se_w = se_params(32, 8, torch.float32, DEV, g)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_graph_capture_and_replay(dtype):
    g = _gen("graph", str(dtype))
    x = make_x((2, 72, 56, 56), dtype, DEV, "channels_last", g)  # big enough for the partial-sum pass
    w, b = dwconv_params(72, 5, dtype, DEV, g)
    se_w = se_params(72, 24, dtype, DEV, g)

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
        x.copy_(make_x(x.shape, dtype, DEV, "channels_last", g))
        graph.replay()
        torch.cuda.synchronize()
        expected_out, expected_mean = step()
        assert torch.equal(out, expected_out) and torch.equal(mean, expected_mean)


def test_bad_input_raises_instead_of_crashing():
    x = torch.randn(1, 8, 5, 5, device=DEV)
    w, b = dwconv_params(8, 3, torch.float32, DEV)
    with pytest.raises(RuntimeError, match="weight must have shape"):
        torch.ops.mnv3.dwconv_bias_act(x, w[:4], b, [1, 1], [1, 1], [1, 1], "relu", True)
    with pytest.raises(RuntimeError, match="must be on the same device"):
        torch.ops.mnv3.dwconv_bias_act(x, w.cpu(), b, [1, 1], [1, 1], [1, 1], "relu", True)
    with pytest.raises(RuntimeError, match="too large"):
        big_w = torch.randn(8, 1, 111, 111, device=DEV)  # > 12k taps: no room in shared memory
        torch.ops.mnv3.dwconv_bias_act(x.contiguous(memory_format=torch.channels_last), big_w, b,
                                       [1, 1], [55, 55], [1, 1], "relu", True)
    with pytest.raises(RuntimeError, match="pooled must have shape"):
        torch.ops.mnv3.se_excite_scale(x, torch.zeros(1, 4, device=DEV), *se_params(8, 4, torch.float32, DEV),
                                       "sigmoid")
