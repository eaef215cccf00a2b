"""fuse() on models other than torchvision's MobileNetV3: the torch.fx path (fx_fuse.py).

Every model gets random BatchNorm statistics (so folding is exercised), runs
in eval() under torch.inference_mode() on CPU, and is compared with its
unfused self within the tolerance table.  The fused-block counts and the op
calls are asserted too, so a regression that silently fuses nothing fails.
"""

from __future__ import annotations

import logging
import math
import copy
from collections import Counter

import pytest
import seed_mobilenetv3
import torch
import torch.nn.functional as F
from conftest import calibrate_batchnorm, mnv3_op_calls, plan_program_ops, randomize_batchnorm, randomize_classifier
from tolerances import assert_model_close
from torch import fx, nn

import mnv3_kernels as mk
from mnv3_kernels import cpu_conv
from mnv3_kernels.fx_fuse import FusedDWConvBNAct, FusedSqueezeExcite

tvm = pytest.importorskip("torchvision.models", reason="torchvision is needed for its models")


def prepared(model: nn.Module) -> nn.Module:
    randomize_batchnorm(model)
    randomize_classifier(model)
    return model.eval()


def seed_large() -> nn.Module:
    model = seed_mobilenetv3.MobileNetV3_Large(num_classes=1000, in_channels=3)
    # Softmax over 1000 classes squashes logit errors far below the tolerance's atol:
    # compare the logits.  Its 1x1-conv head gets a 1/sqrt(fan_in) init (as
    # randomize_classifier does for Linear heads) so the logits are O(1), not O(1e-2).
    model.soft = nn.Identity()
    with torch.no_grad():
        model.fc.weight.normal_(0.0, 1.0 / math.sqrt(model.fc.in_channels))
        model.fc.bias.normal_(0.0, 0.1)
    return model


def timm_model(name: str):
    def make() -> nn.Module:
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False)

    return make


# name -> (builder, fused depthwise blocks, fused SE blocks, fx path?)
MODELS = {
    # seed: 15 bottlenecks (bneck1..6: 1+2+3+4+2+3), SE in bneck3, bneck5, bneck6 (3+2+3)
    "seed_large": (seed_large, 15, 8, True),
    "tv_mobilenet_v3_large": (tvm.mobilenet_v3_large, 15, 8, False),
    "tv_mobilenet_v3_small": (tvm.mobilenet_v3_small, 11, 9, False),
    "tv_mobilenet_v2": (tvm.mobilenet_v2, 17, 0, True),
    "tv_mnasnet0_5": (tvm.mnasnet0_5, 17, 0, True),
    "timm_mobilenetv3_large_100": (timm_model("mobilenetv3_large_100"), 15, 8, True),
    "timm_mobilenetv3_small_100": (timm_model("mobilenetv3_small_100"), 11, 9, True),
}


# The drop-in models' CPU ops: (expanding blocks, other 1x1 convs + Linears: project, last conv,
# classifier).
DROP_IN_CPU_OPS = {"tv_mobilenet_v3_large": (14, 15 + 1 + 2),
                   "tv_mobilenet_v3_small": (10, 11 + 1 + 2)}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_is_fused_and_matches(name):
    build, n_dw, n_se, fx_path = MODELS[name]
    model = prepared(build())
    calibrate_batchnorm(model, torch.randn(8, 3, 96, 96))  # logits that depend on every layer
    fused = mk.fuse(model)
    report = fused.mnv3_fuse_report
    assert (report.count("dwconv"), report.count("se")) == (n_dw, n_se), str(report)
    assert isinstance(fused, fx.GraphModule) is fx_path
    if fx_path:
        kinds = Counter(type(m) for m in fused.modules())
        assert (kinds[FusedDWConvBNAct], kinds[FusedSqueezeExcite]) == (n_dw, n_se)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        expected = model(x)
        reference64 = copy.deepcopy(model).double()(x.double())  # the seed is ill-conditioned in fp32
        calls = mnv3_op_calls(fused, x)
        actual = fused(x)
    expected_calls = Counter({"dwconv_bias_act": n_dw, "se_excite_scale": n_se})
    if not fx_path and cpu_conv.native_available():
        # The drop-in model's CPU path (see test_model.test_fused_ops_really_run): the
        # expanding blocks as pointwise_dwconv, the other 1x1 convs and the Linears as
        # pointwise_bias_act, which also applies the SE gates (made by se_gate); the stem as
        # conv_bias_act.
        merged, pointwise = DROP_IN_CPU_OPS[name]
        expected_calls.update(pointwise_dwconv=merged, dwconv_bias_act=-merged, pointwise_bias_act=pointwise,
                              se_excite_scale=-n_se, se_gate=n_se, conv_bias_act=1)
        # all of them in one mnv3::run_plan call, as its program lists them
        assert plan_program_ops(fused) == +expected_calls
        expected_calls = Counter(run_plan=1)
    assert calls == +expected_calls  # + drops zero counts
    assert_model_close(actual, expected, reference64)


# torchvision's segmentation models on MobileNetV3-Large with its last stage dilated (5x5
# depthwise convs at dilation 2): the backbone's blocks fused through torch.fx.
SEGMENTATION = ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_backbone_is_fused_and_matches(name, layout):
    model = prepared(getattr(tvm.segmentation, name)(weights=None, weights_backbone=None))
    x = torch.randn(2, 3, 96, 96)
    calibrate_batchnorm(model, x)
    if layout == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    fused = mk.fuse(model)
    assert (fused.mnv3_fuse_report.count("dwconv"), fused.mnv3_fuse_report.count("se")) == (15, 8)
    dilated = [m for m in fused.modules() if isinstance(m, FusedDWConvBNAct) and m.part("conv").dilation != (1, 1)]
    assert len(dilated) == 3  # the last stage's three 5x5 blocks
    with torch.inference_mode():
        expected = model(x)["out"]
        reference64 = copy.deepcopy(model).double()(x.double())["out"]
        calls = mnv3_op_calls(fused, x)
        actual = fused(x)["out"]
    assert calls == Counter({"dwconv_bias_act": 15, "se_excite_scale": 8})
    assert actual.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                                else torch.contiguous_format)
    assert_model_close(actual, expected, reference64)


def test_seed_se_takes_its_squeeze_from_the_depthwise_pass():
    """The seed's SE follows its depthwise block: the dw op computes the mean (with_mean)."""
    fused = mk.fuse(prepared(seed_large()))
    with_mean = [m.where for m in fused.modules() if isinstance(m, FusedDWConvBNAct) and m.with_mean]
    assert len(with_mean) == 8
    assert all(w.startswith(("bneck3.", "bneck5.", "bneck6.")) for w in with_mean)


def test_state_dict_keys_kept_for_whole_module_patterns_and_parameters_shared_inplace():
    model = prepared(tvm.mobilenet_v2())
    copy = mk.fuse(model)
    assert list(copy.state_dict()) == list(model.state_dict())  # dw blocks are whole Conv2dNormActivations
    dw = "features.1.conv.0"  # a torchvision Conv2dNormActivation: (0) conv, (1) BatchNorm2d, (2) ReLU6
    assert copy.get_submodule(dw + ".0").weight is not model.get_submodule(dw + ".0").weight
    shared = mk.fuse(model, inplace=True)
    assert isinstance(shared.get_submodule(dw), FusedDWConvBNAct)
    assert shared.get_submodule(dw + ".0").weight is model.get_submodule(dw + ".0").weight


def test_timm_keys_move_under_the_fused_module():
    timm = pytest.importorskip("timm")
    model = prepared(timm.create_model("mobilenetv3_small_100", pretrained=False))
    fused = mk.fuse(model)
    original, now = set(model.state_dict()), set(fused.state_dict())
    assert "blocks.1.0.conv_dw.conv.weight" in now and "blocks.1.0.conv_dw.bn.running_var" in now
    assert "blocks.1.0.bn2.running_var" not in now  # moved, not duplicated
    assert "blocks.2.0.se.conv_reduce.weight" in now  # the SE is a whole module: keys kept
    assert len(now) == len(original)


def test_timm_model_made_under_inference_mode():
    """timm's BatchNormAct2d has children, so the fold cache keys all its tensors: inference
    tensors (no version counter) must work there too."""
    timm = pytest.importorskip("timm")
    with torch.inference_mode():
        model = prepared(timm.create_model("mobilenetv3_small_100", pretrained=False))
        fused = mk.fuse(model)
        check_matches(model, fused, (2, 3, 64, 64))


def test_efficientnet_silu_is_reported_and_left_alone():
    model = prepared(tvm.efficientnet_b0())
    with pytest.warns(UserWarning, match="nothing was fused in EfficientNet"):
        fused = mk.fuse(model)
    report = fused.mnv3_fuse_report
    assert report.fused == [] and type(fused) is type(model)
    whys = Counter(s.why for s in report.skipped)
    assert whys["activation SiLU not supported (ReLU, ReLU6, Hardswish, identity)"] == 16
    assert whys["SE activation SiLU not supported (ReLU only)"] == 16
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert_model_close(fused(x), model(x))


# --------------------------------------------------------------------------- small hand-written models
class DWBlock(nn.Module):
    def __init__(self, c: int, act, k: int = 3, stride: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(c, c, k, stride, padding=k // 2, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = act

    def forward(self, x):
        return self.act(self.bn(self.dw(x)))


class LinearSE(nn.Module):
    """The classic SENet block: Linear FCs on the flattened pool, view back, expand_as."""

    def __init__(self, c: int, bn: bool, gate=nn.Sigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        norm = [nn.BatchNorm1d(c // 4)] if bn else []
        self.fc = nn.Sequential(nn.Linear(c, c // 4), *norm, nn.ReLU(inplace=True), nn.Linear(c // 4, c),
                                *([nn.BatchNorm1d(c)] if bn else []), gate())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class FunctionalSE(nn.Module):
    def __init__(self, c: int, gate, act=F.relu):
        super().__init__()
        self.reduce = nn.Conv2d(c, c // 4, 1)
        self.expand = nn.Conv2d(c // 4, c, 1)
        self.gate, self.act = gate, act

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class HSwish(nn.Module):
    """A hand-written hard swish, as in many MobileNetV3 re-implementations."""

    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


class Synthetic(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, padding=1)
        self.b1, self.se1 = DWBlock(16, F.relu6), LinearSE(16, bn=True)
        self.b2, self.se2 = DWBlock(16, lambda t: t.relu(), k=5), FunctionalSE(16, F.hardsigmoid)
        self.b3, self.se3 = DWBlock(16, HSwish(), stride=2), FunctionalSE(16, torch.sigmoid)
        self.b4, self.se4 = DWBlock(16, nn.Identity()), LinearSE(16, bn=False, gate=nn.Hardsigmoid)

    def forward(self, x):
        x = self.stem(x)
        x = self.se1(self.b1(x))
        x = self.se2(self.b2(x)) + x
        x = self.se3(self.b3(x))
        return self.se4(self.b4(x))


def check_matches(model: nn.Module, fused: nn.Module, shape=(2, 3, 32, 32), dtype=torch.float32):
    x = torch.randn(*shape, dtype=dtype)
    with torch.inference_mode():
        assert_model_close(fused(x), model(x))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_functional_linear_and_handwritten_variants(layout):
    model = prepared(Synthetic())
    fused = mk.fuse(model)
    details = [f.detail for f in fused.mnv3_fuse_report.fused]
    assert details == [
        "3x3 stride 1, relu6", "5x5 stride 1, relu", "3x3 stride 2, hardswish", "3x3 stride 1, identity",
        "Linear FCs, sigmoid gate, BatchNorm folded", "1x1 conv FCs, hardsigmoid gate",
        "1x1 conv FCs, sigmoid gate", "Linear FCs, hardsigmoid gate",
    ], str(fused.mnv3_fuse_report)
    x = torch.randn(2, 3, 32, 32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert_model_close(fused(x), model(x))
        assert mnv3_op_calls(fused, x) == {"dwconv_bias_act": 4, "se_excite_scale": 4}


def test_fold_cache_follows_changes_to_the_shared_parameters():
    model = prepared(Synthetic())
    fused = mk.fuse(model, inplace=True)  # parameters shared with model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = fused(x)
        model.b2.bn.running_var.mul_(3.0)  # in place, as load_state_dict or a BN update would
        model.se1.fc[1].bias.add_(0.5)  # the Linear SE's BatchNorm1d
        after = fused(x)
        assert not torch.allclose(before, after)
        assert_model_close(after, model(x))


def test_timm_activation_classes_are_identified_numerically():
    pytest.importorskip("timm")
    from timm.layers.activations import HardSigmoid, HardSwish
    from timm.models._efficientnet_blocks import SqueezeExcite

    model = prepared(nn.Sequential(DWBlock(8, HardSwish()), SqueezeExcite(8, gate_layer=HardSigmoid)))
    fused = mk.fuse(model)
    assert [f.detail for f in fused.mnv3_fuse_report.fused] == ["3x3 stride 1, hardswish",
                                                                 "1x1 conv FCs, hardsigmoid gate"]
    check_matches(model, fused, (2, 8, 12, 12))


class AlmostHardSigmoid(nn.Module):
    def forward(self, x):
        return F.relu6(x + 3.0) / 5.0  # not relu6(x + 3) / 6: must not be taken for a hard sigmoid


def conv_bn_act(conv: nn.Conv2d, act: nn.Module | None = None, bn: nn.Module | None = None) -> nn.Sequential:
    bn = nn.BatchNorm2d(conv.out_channels) if bn is None else bn
    return nn.Sequential(conv, bn, *([act] if act is not None else [])).eval()


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = conv_bn_act(nn.Conv2d(8, 8, 3, padding=1, groups=8))

    def forward(self, x):
        return self.block(self.block(x))


SKIPS = {
    "silu": (lambda: conv_bn_act(nn.Conv2d(8, 8, 3, groups=8), nn.SiLU()),
             "activation SiLU not supported (ReLU, ReLU6, Hardswish, identity)"),
    "reflect": (lambda: conv_bn_act(nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"), nn.ReLU()),
                "padding_mode 'reflect'"),
    "grouped": (lambda: conv_bn_act(nn.Conv2d(8, 8, 3, groups=2), nn.ReLU()),
                "conv not depthwise (groups=2, in_channels=8, out_channels=8)"),
    "multiplier": (lambda: conv_bn_act(nn.Conv2d(8, 16, 3, groups=8), nn.ReLU()),
                   "conv not depthwise (groups=8, in_channels=8, out_channels=16)"),
    "pointwise": (lambda: conv_bn_act(nn.Conv2d(8, 8, 1), nn.ReLU()), "conv not depthwise (groups=1)"),
    "no-bn": (lambda: nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.ReLU()).eval(),
              "not followed by BatchNorm2d (followed by ReLU '1')"),
    "bn-training": (lambda: conv_bn_act(nn.Conv2d(8, 8, 3, groups=8)).train(),
                    "BatchNorm in training mode (call model.eval() before fuse())"),
    "bn-no-stats": (lambda: conv_bn_act(nn.Conv2d(8, 8, 3, groups=8),
                                         bn=nn.BatchNorm2d(8, track_running_stats=False)),
                    "BatchNorm without running statistics (track_running_stats=False)"),
    "group-norm": (lambda: conv_bn_act(nn.Conv2d(8, 8, 3, groups=8), bn=nn.GroupNorm(2, 8)),
                   "not followed by BatchNorm2d (followed by GroupNorm '1')"),
    "shared-weights": (Shared, "conv is called 2 times (shared weights)"),
    "float64": (lambda: conv_bn_act(nn.Conv2d(8, 8, 3, groups=8), nn.ReLU()).double(),
                "dtype torch.float64 not supported (float32, float16, bfloat16)"),
    "se-gelu": (lambda: FunctionalSE(8, torch.sigmoid, act=F.gelu), "SE activation gelu not supported (ReLU only)"),
    "se-tanh": (lambda: FunctionalSE(8, torch.tanh), "SE gate tanh not supported (Hardsigmoid, Sigmoid)"),
    # not identified as a hard sigmoid, so torch.fx traces into it: its first op is what follows fc2
    "se-not-hardsigmoid": (lambda: FunctionalSE(8, AlmostHardSigmoid()),
                           "expected the SE gate after Conv2d 'expand', found add"),
}


@pytest.mark.parametrize("case", list(SKIPS))
def test_left_alone_with_the_reason(case):
    build, why = SKIPS[case]
    model = build()
    randomize_batchnorm(model)
    with pytest.warns(UserWarning, match="nothing was fused"):
        fused = mk.fuse(model)
    report = fused.mnv3_fuse_report
    assert report.fused == []
    assert any(why in s.why for s in report.skipped), str(report)
    assert why in str(report)
    dtype = next(model.parameters()).dtype
    check_matches(model, fused, (2, 8, 12, 12), dtype)


def test_nothing_fusable_returns_the_model_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    with pytest.warns(UserWarning, match=r"nothing was fused in Sequential; see the reasons in "
                                         r"result.mnv3_fuse_report"):
        fused = mk.fuse(model)
    assert type(fused) is nn.Sequential and fused is not model
    assert "nothing was fused" in str(fused.mnv3_fuse_report)


# --------------------------------------------------------------------------- train and eval
def test_train_mode_runs_the_original_modules_and_eval_fuses_again():
    """One family of fused modules (fused_layers.FusedModule): in train() mode fuse()'s
    modules run the original modules, as the drop-in model's layers do (BatchNorm on
    batch statistics, gradients flowing), and fuse again in eval()."""
    model = prepared(seed_large())
    fused = mk.fuse(model)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    fused.train()
    out = fused(x)
    assert_model_close(out, model(x))
    out.sum().backward()
    assert all(p.grad is not None for p in fused.parameters() if p.requires_grad)
    fused.eval()
    model.eval()
    fused.zero_grad(set_to_none=True)
    fused.requires_grad_(False)
    check_matches(model, fused, (2, 3, 64, 64))


def test_eval_with_autograd_runs_the_original_modules(monkeypatch):
    import mnv3_kernels.models.fused_layers as fl

    monkeypatch.setattr(fl, "_grad_warning_shown", False)
    model = prepared(Synthetic())
    fused = mk.fuse(model)
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(RuntimeWarning, match="eval-mode forward with autograd enabled runs the unfused modules"):
        calls = mnv3_op_calls(fused, x)
    assert calls == {}
    out = fused(x)
    out.sum().backward()
    assert isinstance(fused.b1, FusedDWConvBNAct)  # DWBlock is all pattern: replaced whole, keys kept
    assert fused.b1.dw.weight.grad is not None
    with torch.no_grad():
        assert_model_close(out.detach(), model(x))


# --------------------------------------------------------------------------- tracing fallbacks
class DataDependent(nn.Module):
    """torch.fx cannot trace this forward (a branch on tensor values)."""

    def __init__(self):
        super().__init__()
        self.block = conv_bn_act(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6())

    def forward(self, x):
        if x.sum() > 0:
            return self.block(x)
        return self.block(-x)


class SignFlip(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


@pytest.mark.parametrize("where", ["submodule", "root"])
def test_untraceable_parts_are_searched_one_level_down(where):
    inner = DataDependent()
    model = inner if where == "root" else nn.Sequential(
        inner, SignFlip(), conv_bn_act(nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.Hardswish()))
    model = prepared(model)
    fused = mk.fuse(model)
    report = fused.mnv3_fuse_report
    untraced = {s.where: s.why for s in report.skipped if s.kind == "trace"}
    if where == "root":
        assert list(untraced) == ["<model>"]
    else:
        assert list(untraced) == ["0", "1"]
        assert untraced["1"].endswith("called as one module")
    assert untraced["<model>" if where == "root" else "0"].startswith(
        "torch.fx cannot trace its forward (TraceError: symbolically traced variables cannot be used as inputs "
        "to control flow); searched its submodules")
    assert report.count("dwconv") == (1 if where == "root" else 2)
    assert (fused if where == "root" else fused.get_submodule("0")).block is not inner.block  # replaced inside
    check_matches(model, fused, (2, 8, 12, 12))


# --------------------------------------------------------------------------- report API, export
def test_report_api(capsys, caplog):
    model = prepared(Synthetic())
    with caplog.at_level(logging.INFO, logger="mnv3_kernels.fuse"):
        fused = mk.fuse(model, verbose=True)
    report = fused.mnv3_fuse_report
    printed = capsys.readouterr().out
    assert printed.strip() == str(report) and str(report) in caplog.text
    assert str(report).startswith("mnv3_kernels.fuse(Synthetic) via torch.fx: fused 4 depthwise conv + BatchNorm "
                                  "+ activation, 4 squeeze-excitation; left alone 1")
    first = report.fused[0]
    assert (first.kind, first.where, first.replaced) == ("dwconv", "b1", ("b1.dw", "b1.bn", "relu6"))
    with pytest.raises(ValueError, match=r"kind must be one of \('dwconv', 'se'\), got 'conv'"):
        report.count("conv")


def test_torch_export_of_a_generic_fused_model():
    model = prepared(Synthetic())
    fused = mk.fuse(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        exported = torch.export.export(fused, (x,))
        targets = Counter(str(n.target) for n in exported.graph.nodes)
        assert targets["mnv3.dwconv_bias_act.default"] == 4 and targets["mnv3.se_excite_scale.default"] == 4
        assert_model_close(exported.module()(x), model(x))
