"""Each fused op vs its eager decomposition, on the layer shapes of MobileNetV3-Large
at 224x224 (found by running the model), with achieved GB/s (bytes that must move:
input, output, parameters; fp32 means for the squeeze)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import sync

import mnv3_kernels as mk
from mnv3_kernels import cpu_conv
from mnv3_kernels.layout import pack_pointwise_weight
from mnv3_kernels.models.fused_layers import Conv2dNormActivation, SqueezeExcitation


def _large_layer_shapes():
    """(C, H, W, k, stride, activation, has_se) of every depthwise layer of Large at 224."""
    model = mk.mobilenet_v3_large().eval()
    shapes = []
    for block in model.features[1:-1]:
        layers = list(block.block)
        for i, layer in enumerate(layers):
            if isinstance(layer, Conv2dNormActivation) and layer[0].groups > 1:
                conv = layer[0]
                has_se = i + 1 < len(layers) and isinstance(layers[i + 1], SqueezeExcitation)
                act = "hardswish" if isinstance(layer[-1], torch.nn.Hardswish) else "relu"
                shapes.append([conv.in_channels, None, None, conv.kernel_size[0], conv.stride[0], act, has_se])
    size = 112  # after the stem
    for s in shapes:
        s[1] = s[2] = size
        size = (size - 1) // s[4] + 1
    return [tuple(s) for s in shapes]


LAYERS = _large_layer_shapes()
IDS = [f"C{c}-{h}x{w}-k{k}s{s}-{a}{'-se' if se else ''}" for c, h, w, k, s, a, se in LAYERS]
ACT = {"relu": F.relu, "hardswish": F.hardswish}


def _gbps(benchmark, nbytes: int):
    benchmark.extra_info["bytes"] = nbytes
    if benchmark.stats:
        benchmark.extra_info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
@pytest.mark.parametrize("variant", ("eager", "fused"))
def test_dwconv_bias_act(benchmark, device, layer, variant):
    c, h, w, k, s, act, se = layer
    x = torch.randn(1, c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(c, 1, k, k, device=device), torch.randn(c, device=device)
    pad = (k - 1) // 2
    wait = sync(device)

    def eager():
        y = ACT[act](F.conv2d(x, weight, bias, s, pad, 1, c))
        if se:
            y.mean((2, 3))
        wait()

    def fused():
        mk.dwconv_bias_act(x, weight, bias, s, pad, 1, act, with_mean=se)
        wait()

    benchmark.group = f"dwconv {IDS[LAYERS.index(layer)]} {device.type}"
    with torch.inference_mode():
        benchmark.pedantic(eager if variant == "eager" else fused, warmup_rounds=5, rounds=50, iterations=1)
    oh = (h + 2 * pad - k) // s + 1
    _gbps(benchmark, 4 * (c * h * w + c * oh * oh + c * k * k + c + (c if se else 0)))


SE_LAYERS = [layer for layer in LAYERS if layer[-1]]


@pytest.mark.parametrize("layer", SE_LAYERS, ids=[IDS[LAYERS.index(layer)] for layer in SE_LAYERS])
@pytest.mark.parametrize("variant", ("eager", "fused"))
def test_se_excite_scale(benchmark, device, layer, variant):
    c, h, w, k, s, act, _ = layer
    oh = (h + 2 * ((k - 1) // 2) - k) // s + 1
    cr = max(8, int(c // 4 + 4) // 8 * 8)
    x = torch.randn(1, c, oh, oh, device=device).contiguous(memory_format=torch.channels_last)
    pooled = x.mean((2, 3))
    w1, b1 = torch.randn(cr, c, device=device), torch.randn(cr, device=device)
    w2, b2 = torch.randn(c, cr, device=device), torch.randn(c, device=device)
    wait = sync(device)

    def eager():
        g = F.hardsigmoid(F.linear(F.relu(F.linear(pooled, w1, b1)), w2, b2))
        x * g[:, :, None, None]
        wait()

    def fused():
        mk.se_excite_scale(x, pooled, w1, b1, w2, b2, "hardsigmoid")
        wait()

    benchmark.group = f"se {IDS[LAYERS.index(layer)]} {device.type}"
    with torch.inference_mode():
        benchmark.pedantic(eager if variant == "eager" else fused, warmup_rounds=5, rounds=50, iterations=1)
    _gbps(benchmark, 4 * (2 * c * oh * oh + 2 * c * cr + cr + 2 * c))


def _large_expand_shapes():
    """(Cin, Chid, H, k, stride, activation) of every block of Large at 224 that expands."""
    model = mk.mobilenet_v3_large().eval()
    shapes, size = [], 112
    for block in model.features[1:-1]:
        layers = list(block.block)
        dw = next(layer[0] for layer in layers if layer[0].groups > 1)
        if layers[0][0].groups == 1:  # a 1x1 expand conv first
            act = "hardswish" if isinstance(layers[0][-1], torch.nn.Hardswish) else "relu"
            shapes.append((layers[0][0].in_channels, dw.in_channels, size, dw.kernel_size[0], dw.stride[0], act))
        size = (size - 1) // dw.stride[0] + 1
    return shapes


EXPAND = _large_expand_shapes()
EXPAND_IDS = [f"{ci}to{ch}-{h}x{h}-k{k}s{s}-{a}" for ci, ch, h, k, s, a in EXPAND]


@pytest.mark.parametrize("layer", EXPAND, ids=EXPAND_IDS)
@pytest.mark.parametrize("variant", ("eager", "fused"))
def test_pointwise_dwconv(benchmark, device, layer, variant):
    """The CPU fast path's expand 1x1 + depthwise in one op (mnv3::pointwise_dwconv)."""
    if device.type != "cpu" or not cpu_conv.native_available():
        pytest.skip("mnv3::pointwise_dwconv is a CPU op of the CPU extension")
    cin, ch, h, k, s, act = layer
    x = torch.randn(1, cin, h, h).contiguous(memory_format=torch.channels_last)
    w1, b1 = torch.randn(ch, cin) / cin**0.5, torch.randn(ch)
    wd, bd = torch.randn(ch, 1, k, k), torch.randn(ch)
    w1k, pad = pack_pointwise_weight(w1), (k - 1) // 2
    op = torch.ops.mnv3.pointwise_dwconv.default

    def eager():
        ACT[act](F.conv2d(ACT[act](F.conv2d(x, w1[:, :, None, None], b1)), wd, bd, s, pad, 1, ch))

    def fused():
        op(x, w1k, b1, act, wd, bd, [s, s], [pad, pad], [1, 1], act, False)

    benchmark.group = f"pointwise_dwconv {EXPAND_IDS[EXPAND.index(layer)]} cpu"
    with torch.inference_mode():
        benchmark.pedantic(eager if variant == "eager" else fused, warmup_rounds=5, rounds=50, iterations=1)
    oh = (h - 1) // s + 1
    _gbps(benchmark, 4 * (cin * h * h + ch * oh * oh + ch * cin + ch * k * k + 2 * ch))
