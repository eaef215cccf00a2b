"""The packed conv / linear layers of the CPU model's module path (mnv3_kernels/cpu_conv.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import disable_fast_plan
from tolerances import assert_model_close, assert_op_close

from mnv3_kernels import cpu_conv, reference

pytestmark = pytest.mark.skipif(not cpu_conv.native_available(), reason="the CPU extension is not built")


@pytest.mark.parametrize("activation", ("identity", "relu", "relu6", "hardswish"))
@pytest.mark.parametrize("shape", [(1, 40, 28, 28), (4, 40, 7, 9), (2, 40, 1, 1), (3, 40, 113, 2)])
def test_packed_conv_matches_conv_then_activation_at_any_input_size(shape, activation):
    """Weights are packed once for an example size; every input size must run on them."""
    w, b = torch.randn(24, 40, 1, 1) / 40**0.5, torch.randn(24)
    packed = cpu_conv.prepack(w, b, (1, 1), (0, 0), (1, 1), 1, activation)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    expected = reference.ACTIVATION_FNS[activation](F.conv2d(x, w, b))
    assert_op_close(cpu_conv.run(packed, x), expected)


def test_packed_conv_with_residual_and_a_strided_kxk_conv():
    w, b = torch.randn(16, 3, 3, 3), torch.randn(16)
    packed = cpu_conv.prepack(w, b, (2, 2), (1, 1), (1, 1), 1, "identity")
    x = torch.randn(2, 3, 37, 30).contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, w, b, 2, 1)
    residual = torch.randn_like(y).contiguous(memory_format=torch.channels_last)
    assert_op_close(cpu_conv.run(packed, x, residual), y + residual)


@pytest.mark.parametrize("activation", ("identity", "hardswish"))
@pytest.mark.parametrize("batch", [1, 3])
def test_packed_linear_matches_linear_then_activation(batch, activation):
    w, b = torch.randn(24, 40) / 40**0.5, torch.randn(24)
    packed = cpu_conv.prepack_linear(w, b, activation)
    assert packed is not None and packed.linear
    x = torch.randn(batch, 40)
    assert_op_close(cpu_conv.run(packed, x), reference.ACTIVATION_FNS[activation](F.linear(x, w, b)))


def test_prepack_declines_what_it_cannot_run():
    w, b = torch.randn(8, 4, 1, 1), torch.randn(8)
    assert cpu_conv.prepack(w.double(), b.double(), (1, 1), (0, 0), (1, 1), 1, "relu") is None
    assert cpu_conv.prepack(w, b, (1, 1), (0, 0), (1, 1), 1, "gelu") is None
    assert cpu_conv.prepack_linear(w.flatten(1).double(), b.double()) is None


def test_fused_model_uses_the_packed_convs_and_matches_without_them(monkeypatch):
    tvm = pytest.importorskip("torchvision.models")
    import mnv3_kernels as mk
    from mnv3_kernels.testing import randomize_batchnorm, randomize_classifier

    tv = tvm.mobilenet_v3_large()
    randomize_batchnorm(tv)
    randomize_classifier(tv)
    fused = mk.fuse(tv.eval())
    x = torch.randn(2, 3, 96, 96)
    calls = []
    run = cpu_conv.run
    # The module path (the CPU fast plan runs the same packed layers inside one mnv3::run_plan call).
    disable_fast_plan(monkeypatch)
    monkeypatch.setattr(cpu_conv, "run", lambda p, xx, residual=None, scale=None: calls.append(
        (xx.dim(), p.linear, residual is not None)) or run(p, xx, residual, scale))
    with torch.inference_mode():
        packed_out = fused(x)
        expected = tv(x)
    # the 3x3 stem as a convolution; the head and 15 project 1x1 convs as
    # matrix products on the channels-last rows, 10 projections with the residual
    # (the 14 expand convs run inside pointwise_dwconv, with their depthwise convs);
    # the classifier's two Linear layers.
    assert calls.count((4, False, False)) == 1
    assert calls.count((4, True, False)) == 6 and calls.count((4, True, True)) == 10
    assert calls.count((2, True, False)) == 2 and len(calls) == 19
    monkeypatch.setattr(cpu_conv, "native_available", lambda: False)
    plain = mk.fuse(tv)
    with torch.inference_mode():
        plain_out = plain(x)
    assert_model_close(packed_out, plain_out)
    assert_model_close(packed_out, expected)
