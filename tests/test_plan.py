"""The plan compiler (mnv3_kernels/plan) and freeze() on the MobileNet family.

Each model of the bench's zoo is frozen (compiled into plan segments, run by
mnv3::run_plan) and compared with its eager self at an odd input size, batch 1
and 3, within the model tolerance (the seed's ill-conditioned model against a
float64 run, tolerances.py).  The same plan also runs on the reference ops
through the Python interpreter.  Models with something the compiler does not
lower in the middle (EfficientNet-B0's SiLU, a custom module) run as several
segments and say why.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import calibrate_batchnorm, cpu_plan_marks
from tolerances import assert_model_close
from torch import nn
from torch.nn import functional as F

import mnv3_kernels as mk
from mnv3_kernels import zoo
from mnv3_kernels.plan import arena
from mnv3_kernels.plan.compiler import compile_model

pytestmark = cpu_plan_marks()

SIZE = (97, 131)  # odd, not square: every stride-2 layer rounds
# model -> (plan segments, what must be left to the original code)
EXPECTED = {
    "large": (1, set()),
    "small": (1, set()),
    "timm_large": (1, set()),
    "timm_small": (1, set()),
    "lcnet": (1, set()),
    "mobilenet_v2": (1, set()),
    "mnasnet": (1, set()),
    # its head: sigmoid(conv(pool(high))) * cbr(high) (its two bilinear interpolations lowered)
    "lraspp": (2, {"sigmoid outside a squeeze-excitation block", "mul has no plan step"}),
    "seed_large": (1, {"squeeze has no plan step"}),  # then Softmax, replaced by Identity below
}


def _prepared(name: str) -> nn.Module:
    try:
        model = zoo.build(name, seed=0)
    except zoo.Unavailable as e:
        pytest.skip(str(e))
    if name == "seed_large":  # Softmax over 1000 classes hides logit errors: compare the logits
        model.soft = nn.Identity()
    calibrate_batchnorm(model, torch.randn(4, 3, *SIZE))  # logits that depend on every layer
    return model.eval()


def _out(y):
    return zoo.output_tensor(y)


@pytest.fixture(scope="module", params=list(EXPECTED))
def frozen_pair(request):
    torch.manual_seed(0)
    model = _prepared(request.param)
    return request.param, model, mk.freeze(model)


@pytest.mark.parametrize("batch", [1, 3])
def test_frozen_plan_matches_eager(frozen_pair, batch):
    name, model, frozen = frozen_pair
    if name == "seed_large" and batch == 1:
        pytest.skip("the seed's head squeezes the batch dimension away at batch 1 (eager fails too)")
    x = torch.randn(batch, 3, *SIZE)
    with torch.inference_mode():
        out, expected = _out(frozen(x)), _out(model(x))
    reference64 = _out(copy.deepcopy(model).double()(x.double())) if name == "seed_large" else None
    assert_model_close(out, expected, reference64)


def test_segments_and_left_alone(frozen_pair):
    """The compiler lowers the whole classifier into one segment (one run_plan call),
    and says why for each part it leaves to the original code."""
    name, _, frozen = frozen_pair
    segments, left = EXPECTED[name]
    assert len(frozen._plan.segments) == segments, frozen.describe()
    assert {part.why for part in frozen.left_alone} == left, frozen.describe()
    if segments == 1 and not left:
        assert frozen._direct is not None  # the forward is one op call


def test_the_plan_on_the_reference_ops_matches(frozen_pair):
    """The same segments run by the Python interpreter on mnv3_kernels.reference (the
    executor a non-CPU device or dtype gets)."""
    name, model, frozen = frozen_pair
    x = torch.randn(2, 3, *SIZE)
    with torch.inference_mode():
        native = _out(frozen(x))
        with mk.use_backend("reference"):
            interpreted = _out(frozen.graph(x))
    reference64 = _out(copy.deepcopy(model).double()(x.double())) if name == "seed_large" else None
    assert_model_close(interpreted, native, reference64)


def test_efficientnet_runs_as_segments_around_silu():
    tvm = pytest.importorskip("torchvision.models")
    model = tvm.efficientnet_b0()
    calibrate_batchnorm(model, torch.randn(4, 3, 64, 64))
    model.eval()
    frozen = mk.freeze(model)
    assert len(frozen._plan.segments) > 10
    assert any("SiLU not supported" in part.why for part in frozen.left_alone), frozen.describe()
    x = torch.randn(2, 3, 65, 71)
    with torch.inference_mode():
        assert_model_close(frozen(x), model(x))


class Tanhish(nn.Module):
    """A custom module the compiler knows nothing about."""

    def forward(self, x):
        return x * 0.5 + torch.tanh(x)


def _custom_middle() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Tanhish(),
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def test_a_custom_module_in_the_middle_splits_the_plan():
    model = _custom_middle()
    calibrate_batchnorm(model, torch.randn(4, 3, 40, 40))
    model.eval()
    plan = compile_model(model)
    assert len(plan.segments) == 2, plan.describe()
    assert [s.steps for s in plan.segments] == [["conv", "dw"], ["pw", "pool", "pw"]]
    assert [(p.where, p.why) for p in plan.left_alone] == [("6", "mul has no plan step"),
                                                           ("6", "tanh has no plan step"),
                                                           ("6", "an add of two tensors the plan does not compute")]
    frozen = mk.freeze(model)
    x = torch.randn(3, 3, 41, 39)
    with torch.inference_mode():
        assert_model_close(frozen(x), model(x))


class Resizes(nn.Module):
    """A segmentation-style head: bilinear interpolations to another tensor's size,
    to a fixed size, and by a scale factor (the last one not lowered)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        low = self.stem(x)
        high = F.interpolate(self.down(low), size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.head(low + high)
        fixed = F.interpolate(y, size=(11, 6), mode="bilinear", align_corners=True)
        return F.interpolate(y, size=x.size()[2:], mode="bilinear"), fixed, F.interpolate(y, scale_factor=2.0, mode="bilinear")


def test_bilinear_interpolations_lower_to_resize_steps():
    model = Resizes()
    calibrate_batchnorm(model, torch.randn(4, 3, 40, 40))
    model.eval()
    plan = compile_model(model)
    assert [s.steps for s in plan.segments] == [["conv", "dw", "resize", "add", "pw", "resize", "resize"]], \
        plan.describe()
    assert [p.why for p in plan.left_alone] == [
        "interpolate by scale_factor (the resize step takes a size, or another tensor's size)"]
    frozen = mk.freeze(model)
    for shape in [(1, 3, 41, 39), (3, 3, 17, 30)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            out, expected = frozen(x), model(x)
        assert out[0].shape[2:] == x.shape[2:] and out[1].shape[2:] == (11, 6)
        for a, e in zip(out, expected):
            assert_model_close(a, e)


def _conv_bn(cin, cout, k=1, stride=1, groups=1, act=nn.ReLU6):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class Blocks(nn.Module):
    """Inverted residual blocks: with a residual, strided without one, one with an SE
    gate on the projection's input, and one whose depthwise output is also returned."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2)
        self.a = nn.Sequential(_conv_bn(16, 48), _conv_bn(48, 48, 3, 1, 48), _conv_bn(48, 16, act=None))
        self.b = nn.Sequential(_conv_bn(16, 40), _conv_bn(40, 40, 5, 2, 40), _conv_bn(40, 24, act=None))
        self.c_dw = nn.Sequential(_conv_bn(24, 72), _conv_bn(72, 72, 3, 1, 72))
        self.c_se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(72, 24, 1), nn.ReLU(), nn.Conv2d(24, 72, 1),
                                  nn.Hardsigmoid())
        self.c_proj = _conv_bn(72, 24, act=None)
        self.d_dw = nn.Sequential(_conv_bn(24, 64), _conv_bn(64, 64, 3, 1, 64))
        self.d_proj = _conv_bn(64, 24, act=nn.ReLU)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a(x)
        x = self.b(x)
        h = self.c_dw(x)
        x = x + self.c_proj(h * self.c_se(h))
        h = self.d_dw(x)
        return self.d_proj(h), h


def test_blocks_without_se_become_one_pwdwpw_step_on_cpu():
    """pwdw + its projection (+ the residual) -> pwdwpw where the projection alone
    reads the depthwise output without an SE scale; the CUDA target keeps pwdw + pw."""
    from mnv3_kernels.plan import compiler

    model = Blocks()
    calibrate_batchnorm(model, torch.randn(4, 3, 64, 64))
    model.eval()
    (segment,) = compile_model(model).segments
    assert segment.steps == ["conv", "pwdwpw", "pwdwpw", "pwdw", "gate", "pw", "pwdw", "pw"], segment.steps
    (cuda,) = compile_model(model, compiler.CUDA).segments
    assert cuda.steps == ["conv", "pwdw", "pw", "pwdw", "pw", "pwdw", "gate", "pw", "pwdw", "pw"], cuda.steps
    frozen = mk.freeze(model)
    # widths 123 -> 62 (the ring walk: the projections fused) and 19 -> 10 (the two ops)
    for shape in [(3, 3, 61, 123), (1, 3, 17, 19)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            out, expected = frozen(x), model(x)
        for a, e in zip(out, expected):
            assert_model_close(a, e)


def test_frozen_model_does_not_see_later_changes_and_a_new_freeze_does():
    model = _custom_middle()
    calibrate_batchnorm(model, torch.randn(4, 3, 40, 40))
    model.eval()
    frozen = mk.freeze(model)
    x = torch.randn(2, 3, 40, 40)
    with torch.inference_mode():
        before = frozen(x)
    with torch.no_grad():
        model[7].weight.mul_(2.0)  # a lowered conv
        model[12].bias.add_(1.0)  # the head
    with torch.inference_mode():
        assert torch.equal(frozen(x), before)
        assert_model_close(mk.freeze(model)(x), model(x))
        assert not torch.allclose(mk.freeze(model)(x), before)


def test_freeze_refuses_what_it_cannot_compile():
    with pytest.raises(ValueError, match="no Conv2d"):
        mk.freeze(nn.Sequential(nn.Linear(3, 4)).eval())
    with pytest.raises(ValueError, match="no part of .* lowers"):
        mk.freeze(nn.Sequential(nn.Conv2d(3, 4, 7, padding=3), nn.Tanh()).eval())  # 147 taps: no conv step
    with pytest.raises(ValueError, match="eval"):
        mk.freeze(_custom_middle().train())


def test_frozen_tensors_are_copies_in_one_aligned_buffer():
    """freeze() puts every segment's tensors in one buffer (plan/arena.py: huge pages where
    the OS gives them), each on a 64-byte boundary, none sharing memory with the model."""
    model = zoo.build("lraspp", 0).eval()  # two segments
    plan = mk.freeze(model)._plan
    tensors = [t for seg in plan.segments for t in seg.tensors]
    assert len(plan.segments) == 2 and len(tensors) > 50
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    assert all(t.data_ptr() % arena.ALIGN == 0 for t in tensors)
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    assert own.isdisjoint({t.untyped_storage().data_ptr() for t in tensors})


@pytest.mark.parametrize("t", [torch.randn(3, 5), torch.randn(4, 3).t(), torch.randn(5).expand(2, 5),
                               torch.empty(0, 3), torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last),
                               torch.randn(7, dtype=torch.float64), torch.arange(5)],
                         ids=["matrix", "transposed", "expanded", "empty", "channels_last", "float64", "int64"])
def test_arena_copies_as_clone_does(t):
    """The values, dtypes and strides t.clone() gives (the executor reads packed layouts by
    their strides), aligned, and neither aliasing the source nor overlapping a neighbour."""
    first, copy_, last = arena.in_one_buffer([torch.randn(3), t, torch.randn(2, 2)])
    assert copy_.stride() == t.clone().stride() and copy_.dtype == t.dtype and torch.equal(copy_, t)
    assert first.data_ptr() % arena.ALIGN == copy_.data_ptr() % arena.ALIGN == last.data_ptr() % arena.ALIGN == 0
    source, neighbours = t.clone(), (first.clone(), last.clone())
    copy_.fill_(7)
    assert torch.equal(t, source)  # a copy
    assert torch.equal(first, neighbours[0]) and torch.equal(last, neighbours[1])  # spans do not overlap
