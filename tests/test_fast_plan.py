"""The CPU fast plan of MobileNetV3 (mobilenetv3._FastPlan): the module path's ops
as a flat list, and when it must be rebuilt."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import (cpu_plan_marks, disable_fast_plan, mnv3_op_calls, plan_inputs, randomize_batchnorm,
                      randomize_classifier)
from tolerances import assert_model_close
from torch import nn

import mnv3_kernels as mk
from mnv3_kernels.testing import calibrate_batchnorm

tvm = pytest.importorskip("torchvision.models", reason="torchvision is needed to compare against it")
pytestmark = cpu_plan_marks()

X, CALIBRATION = plan_inputs()


@pytest.fixture
def pair():
    """torchvision's Small and its fused copy; calibrated BatchNorm statistics make the
    logits depend on every layer, so a stale plan shows (a check below)."""
    tv = tvm.mobilenet_v3_small()
    randomize_batchnorm(tv)
    randomize_classifier(tv)
    calibrate_batchnorm(tv, CALIBRATION)
    return tv.eval(), mk.fuse(tv).eval()


def run(model):
    with torch.inference_mode():
        return model(X)


def module_path(model, monkeypatch):
    with monkeypatch.context() as m:
        disable_fast_plan(m)
        return run(model)


def test_plan_matches_the_module_path_and_torchvision(pair, monkeypatch):
    """The plan compiler's program of the drop-in model (one run_plan call) against the
    module path (the layers' fused ops one by one) and torchvision."""
    tv, ours = pair
    fast = run(ours)
    plan = ours._fast_plan()
    assert plan is not None and plan.program is not None
    with torch.inference_mode():
        assert mnv3_op_calls(ours, X) == Counter(run_plan=1)
    assert_model_close(fast, module_path(ours, monkeypatch))
    assert_model_close(fast, run(tv))


def test_plan_program_matches_its_reference_interpreter(pair):
    """The C++ executor against the plan's Python interpreter on the mnv3 ops one by one
    (what run_plan's fake kernel runs: the same kernels; the pool step sums in another
    order) and on the pure-PyTorch reference ops."""
    from mnv3_kernels.plan import interpreter

    _, ours = pair
    run(ours)
    tensors, program = ours._fast_plan().program
    with torch.inference_mode():
        fast = torch.ops.mnv3.run_plan.default([X], tensors, program)[0]
        assert_model_close(fast, interpreter.interpret([X], tensors, program, interpreter.MnvOps())[0])
        assert_model_close(fast, interpreter.run_reference([X], tensors, program)[0])


def test_plan_is_reused_while_nothing_changes(pair):
    _, ours = pair
    run(ours)
    plan = ours._fast_plan()
    run(ours)
    assert ours._fast_plan() is plan


def _inplace_weight(model):
    with torch.no_grad():
        model.features[4].block[0][0].weight.mul_(1.5)


def _assign_parameter(model):
    conv = model.features[6].block[1][0]
    conv.weight = nn.Parameter(conv.weight.detach() * -1.0)


def _assign_bn_buffer(model):
    bn = model.features[2].block[2][1]
    bn.running_var = bn.running_var * 3.0


def _replace_submodule(model):
    model.features[5].block[2].scale_activation = nn.Sigmoid()


def _inplace_classifier(model):
    with torch.no_grad():
        model.classifier[3].bias.add_(1.0)


def _move_and_back(model):
    model.double().float()


@pytest.mark.parametrize("change", [_inplace_weight, _assign_parameter, _assign_bn_buffer, _replace_submodule,
                                    _inplace_classifier, _move_and_back])
def test_plan_follows_changes_to_the_model(pair, change):
    tv, ours = pair
    before = run(ours)  # builds the plan
    change(tv)
    change(ours)
    after = run(tv)
    assert_model_close(run(ours), after)
    if change is not _move_and_back:  # the change is visible: a stale plan would fail above
        assert (after - before).abs().max() > 1e-2


def test_a_submodule_in_train_mode_leaves_the_plan(pair):
    tv, ours = pair
    run(ours)
    for model in (tv, ours):
        model.features[3].train()
    with torch.no_grad():  # BatchNorm in train mode: batch statistics, as torchvision
        assert_model_close(ours(X), tv(X))


def test_other_inputs_take_the_module_path(pair, monkeypatch):
    """With a plan cached (forward's first check, _FastPlan.ready), what the plan does
    not cover still runs the module path: autocast, and another backend chosen in code
    or by MNV3_BACKEND."""
    tv, ours = pair
    run(ours)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert "run_plan" not in mnv3_op_calls(ours, X)  # bf16 ops, not the fp32 plan
    with torch.inference_mode(), mk.backends.use_backend("reference"):
        assert mnv3_op_calls(ours, X) == Counter()  # the pure-PyTorch reference
        assert_model_close(ours(X), tv(X))
    monkeypatch.setenv("MNV3_BACKEND", "reference")
    with torch.inference_mode():
        assert mnv3_op_calls(ours, X) == Counter()
    monkeypatch.setenv("MNV3_BACKEND", "native")
    with torch.inference_mode():
        assert mnv3_op_calls(ours, X) == Counter(run_plan=1)


def test_under_no_grad_the_plan_gives_an_ordinary_tensor(pair):
    """Under no_grad the plan runs in inference mode internally; its logits are the same
    and an ordinary tensor (usable in place and in autograd later)."""
    _, ours = pair
    expected = run(ours)
    with torch.no_grad():
        out = ours(X)
    assert not out.is_inference() and torch.equal(out, expected)
    out += 1.0  # an inference tensor would refuse this outside inference mode
