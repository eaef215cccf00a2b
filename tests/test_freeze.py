"""mnv3_kernels.freeze: a MobileNetV3's CPU inference on weights folded and copied once."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import cpu_plan_marks, plan_inputs, randomize_batchnorm, randomize_classifier
from tolerances import assert_lowp_close, assert_model_close
from torch import nn

import mnv3_kernels as mk
from mnv3_kernels.testing import calibrate_batchnorm

tvm = pytest.importorskip("torchvision.models", reason="torchvision is needed to compare against it")
pytestmark = cpu_plan_marks()

X, CALIBRATION = plan_inputs()


def _torchvision(arch: str, **kwargs) -> nn.Module:
    """A torchvision MobileNetV3 whose logits depend on every layer (calibrated BatchNorm
    statistics, a random classifier), in eval mode."""
    tv = getattr(tvm, f"mobilenet_v3_{arch}")(**kwargs)
    randomize_batchnorm(tv)
    randomize_classifier(tv)
    calibrate_batchnorm(tv, CALIBRATION)
    return tv.eval()


@pytest.fixture(scope="module")
def small():
    return _torchvision("small")


@pytest.mark.parametrize("arch, kwargs", [("small", {}), ("large", {}), ("large", {"width_mult": 0.75}),
                                          ("small", {"num_classes": 10, "dropout": 0.5})])
def test_frozen_matches_the_fused_model_bit_for_bit(arch, kwargs):
    """The same program on the same packed weights as the live fused model's forward,
    and torchvision's logits within the model tolerance."""
    tv = _torchvision(arch, **kwargs)
    fused, frozen = mk.fuse(tv), mk.freeze(tv)
    with torch.inference_mode():
        out = frozen(X)
        assert torch.equal(out, fused(X))
        assert_model_close(out, tv(X))


def test_freezes_an_mnv3_kernels_model_without_changing_it(small):
    ours = mk.fuse(small)
    state = copy.deepcopy(ours.state_dict())
    frozen = mk.freeze(ours)
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in state.items())
    assert not ours.training and list(frozen.parameters()) == [] and not frozen.training
    assert frozen._direct is not None  # the whole forward is one mnv3::run_plan call
    with torch.inference_mode():
        assert torch.equal(frozen(X), ours(X))


@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (3, 3, 97, 131), (0, 3, 64, 64)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_any_batch_size_and_layout(small, shape, channels_last):
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    frozen = mk.freeze(small)
    with torch.inference_mode():
        out = frozen(x)
        assert out.shape == (shape[0], 1000)
        if shape[0]:
            assert_model_close(out, small(x))


def test_outside_inference_mode_returns_an_ordinary_tensor(small):
    frozen = mk.freeze(small)
    with torch.inference_mode():
        expected = frozen(X)
    for context in (torch.no_grad, torch.enable_grad):
        with context():
            out = frozen(X)
        assert not out.is_inference() and not out.requires_grad
        assert torch.equal(out, expected)


def test_later_changes_to_the_source_model_do_not_reach_it(small):
    """A snapshot: the weights are copied (some packed tensors would otherwise alias the
    model's own biases)."""
    ours = mk.fuse(small)
    frozen = mk.freeze(ours)
    with torch.inference_mode():
        before = frozen(X)
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(-0.5)
        for name, b in ours.named_buffers():
            if b.is_floating_point():
                b.add_(0.25)
    with torch.inference_mode():
        assert not torch.allclose(ours(X), before)
        assert torch.equal(frozen(X), before)


def test_model_errors(small):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        mk.freeze("mobilenet")
    with pytest.raises(ValueError, match="eval"):
        mk.freeze(copy.deepcopy(small).train())
    with pytest.raises(ValueError, match="float32 CPU kernels.*torch.float64"):
        mk.freeze(copy.deepcopy(small).double())


def test_a_layer_the_plan_does_not_cover_runs_as_itself(small):
    """A changed head (max pool) ends the plan: the pool runs as the model's module, and
    the classifier after it too (the compiler lowers a Linear only on a flattened value
    it pooled itself: of another tensor it does not know the rank); describe() says so."""
    changed = mk.fuse(small)
    changed.avgpool = nn.AdaptiveMaxPool2d(1).eval()
    frozen = mk.freeze(changed)
    assert "AdaptiveMaxPool2d 'avgpool'" in frozen.describe() and len(frozen._plan.segments) == 1
    with torch.inference_mode():
        assert_model_close(frozen(X), changed(X))


@pytest.mark.parametrize("x, error, match", [
    ("image", TypeError, "x must be a torch.Tensor"),
    (torch.randn(2, 3, 72, 64, dtype=torch.float64), ValueError, r"x must be a float32 CPU tensor \[N, 3, H, W\]"),
    (torch.randn(3, 72, 64), ValueError, "x must be"),
    (torch.randn(2, 4, 72, 64), ValueError, r"shape \[2, 4, 72, 64\]"),
    (torch.randn(2, 3, 72, 64, device="meta"), ValueError, "on meta"),
    (torch.randn(2, 3, 72, 64, requires_grad=True), RuntimeError, "requires grad"),
])
def test_input_errors_name_x(small, x, error, match):
    with pytest.raises(error, match=match):
        mk.freeze(small)(x)


def test_unsupported_uses_raise(small):
    frozen = mk.freeze(small)
    with pytest.raises(RuntimeError, match="train mode"):
        frozen.train()
    frozen.eval()  # allowed: it is in eval mode already
    with pytest.raises(RuntimeError, match="cannot be converted or moved"):
        frozen.half()
    with pytest.raises(RuntimeError, match="autocast"), torch.autocast("cpu", dtype=torch.bfloat16):
        frozen(X)
    with pytest.raises(RuntimeError, match="native CPU kernels"), mk.use_backend("reference"):
        frozen(X)
    with torch.inference_mode():  # still usable after each
        assert frozen(X).shape == (2, 1000)


def test_the_cuda_frozen_models_forward_off_the_gpu(small, monkeypatch):
    """FrozenCudaModel's own code (its input checks, the per-shape cache, fresh outputs)
    on the CPU, where no CUDA graph can be captured: built here on a CPU device with the
    capture stubbed out to "cannot capture", so every call runs the plan's graph module
    (the reference interpreter off the GPU).  On a GPU tests/test_cuda_plan.py runs it
    whole, graphs included."""
    from mnv3_kernels.freeze import FrozenCudaModel, cuda_plan

    captured = []
    monkeypatch.setattr(FrozenCudaModel, "_capture", lambda self, x: captured.append(tuple(x.shape)))
    model = copy.deepcopy(small).to(torch.bfloat16)
    frozen = FrozenCudaModel(cuda_plan(model), 3, "test", torch.device("cpu"), torch.bfloat16)
    x = X.to(torch.bfloat16)
    with torch.no_grad():
        expected, own = small(X), model(x)
    first, second = frozen(x), frozen(x)
    assert captured == [tuple(x.shape)]  # one capture attempt per shape
    assert first.data_ptr() != second.data_ptr() and torch.equal(first, second) and not first.is_inference()
    assert_lowp_close(first, expected, own, torch.bfloat16)
    with pytest.raises(ValueError, match="must be a torch.bfloat16 cpu tensor"):
        frozen(X)
    with pytest.raises(RuntimeError, match="cannot be converted or moved"):
        frozen.to(torch.float32)
