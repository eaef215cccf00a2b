"""BatchNorm folding is exact math, done once, and recomputed whenever the model changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_batchnorm
from tolerances import assert_model_close
from torch import nn

import mnv3_kernels as mk
from mnv3_kernels.models.fused_layers import Conv2dNormActivation


@pytest.mark.parametrize("conv_bias", (False, True))
@pytest.mark.parametrize("affine", (False, True))
def test_fold_batchnorm_equals_conv_then_bn_in_float64(conv_bias, affine):
    conv = nn.Conv2d(6, 10, 3, padding=1, bias=conv_bias).double()
    bn = nn.BatchNorm2d(10, eps=1e-3, affine=affine).double().eval()
    randomize_batchnorm(nn.Sequential(bn)) if affine else None
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.2, 3.0)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    w, b = mk.fold_batchnorm(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    torch.testing.assert_close(F.conv2d(x, w, b, padding=1), bn(conv(x)), rtol=1e-12, atol=1e-12)


def cna(**kw):
    layer = Conv2dNormActivation(8, 8, 3, groups=8, activation_layer=nn.Hardswish, **kw)
    randomize_batchnorm(layer)
    return layer.eval()


def test_fold_is_computed_once_and_reused():
    layer = cna()
    first = layer.folded()
    assert layer.folded() is first


def test_cache_dropped_on_train_and_eval():
    layer = cna()
    first = layer.folded()
    layer.train()
    layer.eval()
    assert layer.folded() is not first


def test_cache_dropped_on_load_state_dict():
    layer = cna()
    first = layer.folded()
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["1.running_var"].mul_(2.0)
    layer.load_state_dict(state)
    second = layer.folded()
    assert second is not first
    assert not torch.equal(second.weight, first.weight)


@pytest.mark.parametrize(
    "change",
    [
        lambda l: l[1].running_mean.add_(1.0),                        # in-place buffer update
        lambda l: l[0].weight.detach().mul_(2.0),                     # in-place param update (shared version counter)
        lambda l: setattr(l[0], "weight", nn.Parameter(l[0].weight * 3)),  # parameter replaced
        lambda l: l.double(),                                          # dtype move
    ],
    ids=["buffer-inplace", "param-inplace", "param-replaced", "dtype"],
)
def test_cache_follows_parameter_changes(change):
    layer = cna()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        layer(x)
        change(layer)
        x = x.to(layer[0].weight.dtype)
        fused = layer(x)
        layer.train(False)
        unfused = nn.Sequential.forward(layer, x)
    torch.testing.assert_close(fused, unfused)


def test_eval_with_autograd_runs_unfused_and_warns_once():
    import mnv3_kernels.models.fused_layers as fl

    fl._grad_warning_shown = False
    model = mk.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(RuntimeWarning, match="eval-mode forward with autograd enabled runs the unfused modules"):
        out = model(x)
    out.sum().backward()  # gradients flow through the ordinary modules
    assert model.features[0][0].weight.grad is not None


def test_models_made_under_inference_mode_run_fused():
    """Inference tensors have no version counter: building, fusing or moving a model
    inside torch.inference_mode must still work."""
    tvm = pytest.importorskip("torchvision.models")
    with torch.inference_mode():
        tv = tvm.mobilenet_v3_small(num_classes=10).eval()
        fused = mk.fuse(tv)
        ours = mk.mobilenet_v3_small(num_classes=10).eval()
        ours.load_state_dict(tv.state_dict())
        x = torch.randn(1, 3, 64, 64)
        assert_model_close(fused(x), tv(x))
        assert_model_close(ours(x), tv(x))
