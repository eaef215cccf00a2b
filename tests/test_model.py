"""The drop-in MobileNetV3 and fuse() against torchvision's."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import (calibrate_batchnorm, disable_fast_plan, mnv3_op_calls, plan_program_ops, randomize_batchnorm,
                      randomize_classifier)
from tolerances import assert_model_close

import mnv3_kernels as mk
from mnv3_kernels import cpu_conv
from mnv3_kernels.models.fused_layers import Conv2dNormActivation, SqueezeExcitation

tvm = pytest.importorskip("torchvision.models", reason="torchvision is needed to compare against it")

ARCHS = ("large", "small")


def make_pair(arch, **kwargs):
    """A torchvision model with random weights and BN stats, and ours with its state_dict."""
    tv = getattr(tvm, f"mobilenet_v3_{arch}")(**kwargs)
    randomize_batchnorm(tv)
    randomize_classifier(tv)
    calibrate_batchnorm(tv, torch.randn(8, 3, 96, 96))  # logits that depend on every layer
    ours = getattr(mk, f"mobilenet_v3_{arch}")(**kwargs)
    ours.load_state_dict(tv.state_dict(), strict=True)
    return tv.eval(), ours.eval()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"num_classes": 10, "width_mult": 0.75}, {"reduced_tail": True, "dilated": True, "dropout": 0.5}],
    ids=["default", "width0.75", "tail-dilated"],
)
def test_state_dict_keys_and_shapes_match_torchvision(arch, kwargs):
    tv = getattr(tvm, f"mobilenet_v3_{arch}")(**kwargs)
    ours = getattr(mk, f"mobilenet_v3_{arch}")(**kwargs)
    tv_sd, our_sd = tv.state_dict(), ours.state_dict()
    assert list(tv_sd) == list(our_sd)
    assert all(tv_sd[k].shape == our_sd[k].shape for k in tv_sd)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch", (1, 4))
@pytest.mark.parametrize("size", ((224, 224), (197, 251)))
def test_fused_model_matches_torchvision(arch, batch, size):
    tv, ours = make_pair(arch)
    x = torch.randn(batch, 3, *size)
    with torch.inference_mode():
        expected = tv(x)
        actual = ours(x)
    assert actual.shape == (batch, 1000)
    assert_model_close(actual, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_fuse_torchvision_model(arch):
    tv, _ = make_pair(arch)
    fused = mk.fuse(tv)
    assert isinstance(fused, mk.MobileNetV3)
    assert list(fused.state_dict()) == list(tv.state_dict())
    assert fused.features[0][0].weight is not tv.features[0][0].weight  # not inplace: a copy
    kinds = [type(m) for m in fused.modules()]
    assert Conv2dNormActivation in kinds and SqueezeExcitation in kinds
    x = torch.randn(2, 3, 160, 128)
    with torch.inference_mode():
        assert_model_close(fused(x), tv(x))


def test_fuse_inplace_shares_parameters():
    tv, _ = make_pair("small")
    fused = mk.fuse(tv, inplace=True)
    assert fused.features[0][0].weight is tv.features[0][0].weight


@pytest.mark.parametrize("kwargs", [{"width_mult": 0.5}, {"reduced_tail": True, "dilated": True}],
                         ids=["width0.5", "tail-dilated"])
def test_variants_match_torchvision(kwargs):
    tv, ours = make_pair("large", **kwargs)
    x = torch.randn(2, 3, 96, 112)
    with torch.inference_mode():
        assert_model_close(ours(x), tv(x))


def test_fused_ops_really_run(monkeypatch):
    """The eval forward calls the mnv3 ops (not the unfused modules), on the CPU fast
    plan and on the module path alike (counted at the dispatcher; the plan runs them
    all in one mnv3::run_plan call, its program names them)."""
    _, ours = make_pair("large")
    x = torch.randn(1, 3, 64, 64)

    # 15 bottlenecks, 8 with SE.  With the CPU extension: the 14 that expand run their
    # expand and depthwise convs as one pointwise_dwconv; the 15 projections, the last
    # conv and the classifier's 2 Linears run pointwise_bias_act, which also applies the
    # SE gates as it reads the projection's input (no se_excite_scale); each gate (its two
    # small fc layers) is one se_gate; the 3x3 stem runs conv_bias_act.
    if cpu_conv.native_available():
        expected = Counter(pointwise_dwconv=14, dwconv_bias_act=1, pointwise_bias_act=15 + 1 + 2, se_gate=8,
                           conv_bias_act=1)
    else:
        expected = Counter(dwconv_bias_act=15, se_excite_scale=8)
    with torch.inference_mode():
        if cpu_conv.native_available():
            assert mnv3_op_calls(ours, x) == Counter(run_plan=1)
            assert plan_program_ops(ours) == expected
        else:
            assert mnv3_op_calls(ours, x) == expected
        disable_fast_plan(monkeypatch)
        assert mnv3_op_calls(ours, x) == expected


def test_train_mode_is_an_ordinary_trainable_module():
    tv, ours = make_pair("small")
    tv.train()
    ours.train()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(2)
    out = ours(x)
    torch.manual_seed(2)
    expected = tv(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(p.grad is not None for p in ours.parameters())


def test_channels_last_and_dtype_of_output():
    _, ours = make_pair("small")
    with torch.inference_mode():
        out = ours(torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.float32 and out.shape == (2, 1000)


def test_weights_argument_loads_torchvision_weights(monkeypatch):
    """weights= resolves torchvision's enum and loads its state_dict (download mocked: no network)."""
    tv, _ = make_pair("small")
    monkeypatch.setattr(tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1.__class__, "get_state_dict",
                        lambda self, *a, **k: tv.state_dict())
    ours = mk.mobilenet_v3_small(weights="IMAGENET1K_V1").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        assert_model_close(ours(x), tv(x))
    with pytest.raises(ValueError, match="num_classes=10 does not match the 1000 classes"):
        mk.mobilenet_v3_small(weights="IMAGENET1K_V1", num_classes=10)


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_compile_fullgraph_matches_eager(arch):
    _, ours = make_pair(arch)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = ours(x)
        compiled = torch.compile(ours, fullgraph=True)
        actual = compiled(x)
    assert_model_close(actual, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_cpu_autocast_bf16_follows_the_tolerance_rule(arch, monkeypatch):
    """Under torch.autocast(cpu, bf16) the fused ops run in bf16, like torchvision's convs: the
    error against the fp32 logits is within LOWP_FACTOR x torchvision's own autocast error."""
    from mnv3_kernels import backends
    from mnv3_kernels.tolerances import assert_lowp_close

    op_dtypes = set()
    implementation = backends.implementation

    def spy(op, device):
        impl = implementation(op, device)
        return lambda x, *args: op_dtypes.add(x.dtype) or impl(x, *args)

    monkeypatch.setattr(backends, "implementation", spy)
    tv, ours = make_pair(arch)
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        ref32 = tv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tv_lp = tv(x)
            ours_lp = ours(x)
    assert ours_lp.dtype == tv_lp.dtype == torch.bfloat16
    assert op_dtypes == {torch.bfloat16}
    assert_lowp_close(ours_lp, ref32, tv_lp, torch.bfloat16)


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_export_runs_and_matches_eager(arch):
    _, ours = make_pair(arch)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        exported = torch.export.export(ours, (x,))
        targets = {str(n.target) for n in exported.graph.nodes}
        assert "mnv3.dwconv_bias_act.default" in targets and "mnv3.se_excite_scale.default" in targets
        assert_model_close(exported.module()(x), ours(x))


@pytest.mark.parametrize("build", ["ours", "generic"])
def test_copy_and_save_after_a_fused_forward(build, tmp_path):
    """The caches (folded and packed weights, the CPU plan) are left out of
    deepcopy and torch.save; the copies rebuild them and give the same logits."""
    import copy

    model = (mk.mobilenet_v3_small() if build == "ours" else mk.fuse(tvm.mobilenet_v2().eval())).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)  # fills the caches
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    copies = [copy.deepcopy(model), loaded]
    if build == "ours":
        copies.append(mk.fuse(model))  # fuse() of an mnv3 model deep-copies it
    with torch.inference_mode():
        for other in copies:
            assert torch.equal(other(x), expected)
