"""The C++ plan executor (mnv3::run_plan, csrc/cpu/run_plan_cpu.cpp) on hand-made
programs: every step kind and branch against the plan's Python interpreter
(mnv3_kernels.plan.interpreter.run_reference), and every malformed program
refused, with the interpreter's message (its fake kernel raises the same).

Programs are built from the step table (mnv3_kernels.plan.steps.BY_NAME): no
step code or operand count is written here."""

from __future__ import annotations

import pytest
import torch
from tolerances import assert_op_close

from mnv3_kernels import cpu_conv
from mnv3_kernels.layout import pack_pointwise_weight
from mnv3_kernels.plan.interpreter import run_reference
from mnv3_kernels.plan.steps import BY_NAME, HEADER_FIXED, INT_COUNT
from mnv3_kernels.vocabulary import ACTIVATIONS, GATES

pytestmark = pytest.mark.skipif(not cpu_conv.native_available(), reason="the CPU extension is not built")

run_plan = torch.ops.mnv3.run_plan.default


class Plan:
    """A program and its tensors, step by step: plan.step("pw", y=3, x=0, weight=w, ...)
    with slots as ints, tensor operands as tensors (appended to plan.tensors), pairs
    as [h, w], activations and gates by name; omitted opt_in / opt_out operands are -1."""

    def __init__(self, n_slots: int, n_inputs: int, outputs: list[int]):
        self.header = [n_slots, n_inputs, len(outputs), *outputs]
        self.steps: list[list[int]] = []
        self.names: list[str] = []
        self.tensors: list[torch.Tensor] = []

    def step(self, name: str, **operands) -> Plan:
        ints = [BY_NAME[name].code]
        for operand, kind in BY_NAME[name].operands:
            value = operands.pop(operand, -1 if kind in ("opt_in", "opt_out") else None)
            assert value is not None, f"{name}: operand {operand} missing"
            if kind == "tensor":
                self.tensors.append(value)
                ints.append(len(self.tensors) - 1)
            elif kind == "pair":
                assert len(value) == 2
                ints += list(value)
            elif kind == "act":
                ints.append(ACTIVATIONS.index(value))
            elif kind == "gate":
                ints.append(GATES.index(value))
            else:
                ints.append(int(value))
        assert not operands, f"{name} has no operands {sorted(operands)}"
        assert len(ints) == 1 + BY_NAME[name].ints
        self.steps.append(ints)
        self.names.append(name)
        return self

    @property
    def program(self) -> list[int]:
        return self.header + [v for s in self.steps for v in s]

    def step_at(self, i: int) -> int:
        """The program index of step i's code."""
        return len(self.header) + sum(len(s) for s in self.steps[:i])

    def operand_at(self, i: int, name: str) -> int:
        """The program index of step i's operand `name`."""
        at = self.step_at(i) + 1
        for operand, kind in BY_NAME[self.names[i]].operands:
            if operand == name:
                return at
            at += INT_COUNT[kind]
        raise KeyError(name)


def w(*shape) -> torch.Tensor:
    return torch.randn(*shape) / (shape[1] if len(shape) > 1 else 1) ** 0.5


def nhwc(*shape) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def se_weights(c: int, cr: int) -> dict:
    return dict(w1=w(cr, c), b1=w(cr), w2=w(c, cr), b2=w(c))


def assert_runs_as_reference(inputs: list[torch.Tensor], plan: Plan) -> list[torch.Tensor]:
    """run_plan's outputs match the interpreter's, values within the op tolerance
    and strides exactly (the executor's output layouts)."""
    out = run_plan(inputs, plan.tensors, plan.program)
    expected = run_reference(inputs, plan.tensors, plan.program)
    assert len(out) == len(expected)
    for i, (a, e) in enumerate(zip(out, expected)):
        assert a.stride() == e.stride(), (i, a.stride(), e.stride())
        assert_op_close(a, e)
    return out


def block_plan() -> Plan:
    """conv (NCHW input), dw with its mean, gate, pw with scale and residual, pwdw with
    its mean, a second gate, pw with scale, pool (NHWC), a 2-d pw: two outputs, slots
    1-4 rewritten by later steps."""
    return (Plan(n_slots=8, n_inputs=1, outputs=[7, 1])
            .step("conv", y=1, x=0, weight=w(8, 3, 3, 3), bias=w(8), stride=[2, 2], padding=[1, 1],
                  dilation=[1, 1], activation="hardswish")
            .step("dw", y=2, mean=3, x=1, weight=w(8, 1, 3, 3), bias=w(8), stride=[1, 1], padding=[1, 1],
                  dilation=[1, 1], activation="relu")
            .step("gate", g=4, mean=3, **se_weights(8, 4), gate="sigmoid")
            .step("pw", y=5, x=2, scale=4, residual=1, weight=pack_pointwise_weight(w(8, 8)), bias=w(8),
                  activation="identity")
            .step("pwdw", y=2, mean=3, x=5, weight=pack_pointwise_weight(w(24, 8)), bias=w(24),
                  activation="relu6", dw_weight=w(24, 1, 5, 5), dw_bias=w(24), stride=[2, 2], padding=[2, 2],
                  dilation=[1, 1], dw_activation="hardswish")
            .step("gate", g=4, mean=3, **se_weights(24, 8), gate="hardsigmoid")
            .step("pw", y=1, x=2, scale=4, weight=w(16, 24), bias=w(16), activation="identity")
            .step("pool", y=6, x=1)
            .step("pw", y=7, x=6, weight=pack_pointwise_weight(w(10, 16)), bias=w(10), activation="hardswish"))


def test_block_steps_match_the_interpreter():
    x = torch.randn(2, 3, 19, 17)
    logits, features = assert_runs_as_reference([x], block_plan())
    assert logits.shape == (2, 10) and features.shape == (2, 16, 5, 5)


def test_the_activation_pool_never_lends_inputs_or_outputs():
    """run_plan keeps the values a forward releases and lends them to later outputs of
    the same sizes and strides, in the same call and the next (csrc/cpu/run_plan_cpu.cpp,
    ActivationPool).  The caller's input is released after its last read and has the
    shape of every later output here: it must never be lent (written over); a returned
    output must never be lent by a later call; results must not depend on what the
    pool held."""
    plan = (Plan(n_slots=3, n_inputs=1, outputs=[1])
            .step("act", y=1, x=0, activation="relu")
            .step("act", y=2, x=1, activation="hardswish")  # slot 1 released: lent to the next step
            .step("act", y=1, x=2, activation="relu6"))
    x1, x2 = nhwc(2, 8, 5, 5), nhwc(2, 8, 5, 5)
    x1_before, x2_before = x1.clone(), x2.clone()
    first = assert_runs_as_reference([x1], plan)[0]
    first_before = first.clone()
    second = assert_runs_as_reference([x2], plan)[0]
    third = run_plan([x1], plan.tensors, plan.program)[0]
    assert torch.equal(x1, x1_before) and torch.equal(x2, x2_before)
    assert torch.equal(first, first_before) and first.data_ptr() != second.data_ptr()
    assert torch.equal(third, first)
    logits, features = run_plan([torch.randn(2, 3, 19, 17)], block_plan().tensors, block_plan().program)
    again = run_plan([torch.randn(2, 3, 19, 17)], block_plan().tensors, block_plan().program)
    assert {t.data_ptr() for t in (logits, features)}.isdisjoint(t.data_ptr() for t in again)


def pwdwpw_plan() -> Plan:
    """pwdwpw with a residual (fused on the ring walk at this width at every level)."""
    return Plan(n_slots=3, n_inputs=2, outputs=[2]).step(
        "pwdwpw", y=2, x=0, residual=1, weight=pack_pointwise_weight(w(24, 8)), bias=w(24), activation="relu6",
        dw_weight=w(24, 1, 3, 3), dw_bias=w(24), stride=[1, 1], padding=[1, 1], dilation=[1, 1],
        dw_activation="relu6", proj_weight=pack_pointwise_weight(w(8, 24)), proj_bias=w(8),
        proj_activation="identity")


def test_run_plan_passes_opcheck():
    torch.library.opcheck(run_plan, ([torch.randn(2, 3, 19, 17)], block_plan().tensors, block_plan().program))
    plan = pwdwpw_plan()
    torch.library.opcheck(run_plan, ([nhwc(2, 8, 7, 30), nhwc(2, 8, 7, 30)], plan.tensors, plan.program))


def test_se_and_layout_conversions_match_the_interpreter():
    """dw without its mean (on NHWC and on NCHW), se with the squeeze computed (-1) and
    given, pw with an NCHW x, an NCHW residual and a scale, pool of an NCHW tensor."""
    x = nhwc(2, 8, 9, 9)
    residual = torch.randn(2, 8, 9, 9)  # NCHW: the executor copies it channels-last
    wide = torch.randn(2, 16, 9, 9)  # NCHW
    plan = (Plan(n_slots=11, n_inputs=3, outputs=[10, 6, 7, 9, 3])
            .step("dw", y=3, x=0, weight=w(8, 1, 3, 3), bias=w(8), stride=[1, 1], padding=[1, 1], dilation=[1, 1],
                  activation="relu6")
            .step("se", y=4, x=3, **se_weights(8, 4), gate="hardsigmoid")
            .step("pw", y=5, x=4, residual=1, weight=w(8, 8), bias=w(8), activation="relu")
            .step("pool", y=7, x=2)
            .step("pw", y=6, x=2, scale=7, residual=5, weight=pack_pointwise_weight(w(8, 16)), bias=w(8),
                  activation="hardswish")
            .step("dw", y=8, mean=9, x=6, weight=w(8, 1, 5, 5), bias=w(8), stride=[2, 2], padding=[2, 2],
                  dilation=[1, 1], activation="identity")
            .step("se", y=10, x=8, mean=9, **se_weights(8, 2), gate="sigmoid")
            .step("dw", y=3, x=1, weight=w(8, 1, 3, 3), bias=w(8), stride=[1, 1], padding=[2, 2],
                  dilation=[2, 2], activation="relu"))  # NCHW in, NCHW out
    out = assert_runs_as_reference([x, residual, wide], plan)
    assert not out[4].is_contiguous(memory_format=torch.channels_last)


def test_se_without_its_squeeze_on_an_nchw_input():
    x = torch.randn(2, 8, 6, 5)  # NCHW: the squeeze is computed over a channels-last copy, y stays NCHW
    plan = Plan(n_slots=2, n_inputs=1, outputs=[1]).step("se", y=1, x=0, **se_weights(8, 4), gate="sigmoid")
    (y,) = assert_runs_as_reference([x], plan)
    assert y.is_contiguous()


def test_pw_on_rows_with_scale_and_residual():
    """The 2-d pw (a Linear) with its scale and residual; the 4-d one with neither, x NCHW."""
    x2, scale, res2 = torch.randn(5, 12), torch.rand(5, 12), torch.randn(5, 20)
    x4 = torch.randn(2, 12, 3, 4)
    plan = (Plan(n_slots=6, n_inputs=4, outputs=[4, 5])
            .step("pw", y=4, x=0, scale=1, residual=2, weight=w(20, 12), bias=w(20), activation="relu")
            .step("pw", y=5, x=3, weight=pack_pointwise_weight(w(7, 12)), bias=w(7), activation="relu6"))
    assert_runs_as_reference([x2, scale, res2, x4], plan)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_add_and_act_match_the_interpreter(activation):
    """add of 4-d tensors (one NCHW) and of 2-d ones (one transposed), act on each
    layout; the input slot 2 is rewritten."""
    a, b = nhwc(2, 6, 5, 3), torch.randn(2, 6, 5, 3)
    c, d = torch.randn(4, 7), torch.randn(7, 4).t()
    c_before = c.clone()
    plan = (Plan(n_slots=8, n_inputs=4, outputs=[5, 6, 2, 4])
            .step("add", y=4, a=0, b=1)
            .step("act", y=5, x=4, activation=activation)
            .step("act", y=6, x=1, activation=activation)
            .step("add", y=7, a=2, b=3)
            .step("act", y=2, x=7, activation=activation))
    out = assert_runs_as_reference([a, b, c, d], plan)
    assert out[0].is_contiguous(memory_format=torch.channels_last) and out[2].is_contiguous()
    assert torch.equal(c, c_before)  # rewriting slot 2 leaves the input tensor alone


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_matches_the_interpreter(align_corners):
    """resize up to another slot's size (an NCHW input, copied), down and up to a
    size pair (incl. 1 x 1 and a single input row), odd sizes; output channels-last."""
    x, like, row = torch.randn(2, 21, 7, 9), nhwc(1, 3, 29, 17), nhwc(2, 5, 1, 6)
    plan = (Plan(n_slots=9, n_inputs=3, outputs=[3, 4, 5, 6, 7, 8])
            .step("resize", y=3, x=0, like=1, size=[0, 0], align_corners=align_corners)
            .step("resize", y=4, x=3, size=[5, 4], align_corners=align_corners)
            .step("resize", y=5, x=3, size=[1, 1], align_corners=align_corners)
            .step("resize", y=6, x=2, size=[4, 13], align_corners=align_corners)
            .step("resize", y=7, x=0, size=[7, 9], align_corners=align_corners)
            .step("resize", y=8, x=4, size=[64, 3], align_corners=align_corners))
    out = assert_runs_as_reference([x, like, row], plan)
    assert [list(o.shape[2:]) for o in out] == [[29, 17], [5, 4], [1, 1], [4, 13], [7, 9], [64, 3]]
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in out)
    assert torch.equal(out[4], x)  # the same size: every weight 0 or 1


def test_resize_refuses_bad_operands_as_the_interpreter_does():
    from torch._subclasses.fake_tensor import FakeTensorMode

    plan = Plan(n_slots=2, n_inputs=1, outputs=[1]).step("resize", y=1, x=0, size=[4, 4], align_corners=False)
    program = plan.program
    program[plan.operand_at(0, "align_corners")] = 2
    with pytest.raises(RuntimeError, match=r"mnv3::run_plan: step 0 \(resize\): bad flag code 2"):
        run_plan([torch.randn(1, 2, 3, 3)], [], program)
    with FakeTensorMode() as mode, pytest.raises(ValueError, match=r"step 0 \(resize\): bad flag code 2"):
        run_plan([mode.from_tensor(torch.randn(1, 2, 3, 3))], [], program)
    program = plan.program
    program[plan.operand_at(0, "size") + 1] = 0
    with pytest.raises(RuntimeError, match="resize step's output size must be at least 1 x 1, got 4 x 0"):
        run_plan([torch.randn(1, 2, 3, 3)], [], program)
    with pytest.raises(RuntimeError, match="the resize step needs a float32 4-d x"):
        run_plan([torch.randn(2, 3)], [], plan.program)


# (N, Cin, H, W, C, Cout, k, stride, dilation, residual): widths from 28 up (14
# at avx512: ring_min_width) run the ring walk with the projection fused (OW 28
# or 7: two or seven output rows projected together; odd row counts split
# between threads mid-group), narrower ones the two ops; channel counts off
# the 16-channel panels.
PWDWPW_CASES = [
    (2, 8, 9, 56, 24, 8, 3, 1, 1, True),
    (1, 5, 11, 57, 40, 20, 5, 2, 1, False),
    (3, 16, 7, 60, 72, 24, 3, 2, 1, False),
    (1, 8, 13, 64, 32, 17, 5, 1, 2, True),
    (2, 8, 9, 28, 24, 8, 3, 1, 1, True),
    (3, 12, 7, 14, 48, 24, 5, 2, 1, False),
    (2, 8, 9, 13, 24, 8, 3, 1, 1, True),
    (1, 12, 7, 7, 48, 24, 5, 2, 1, False),
]


@pytest.mark.parametrize("case", PWDWPW_CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-{c[5]}-k{c[6]}s{c[7]}d{c[8]}")
def test_pwdwpw_matches_the_interpreter(case):
    n, cin, h, wd, c, cout, k, stride, dilation, residual = case
    x = nhwc(n, cin, h, wd)
    oh, ow = [(s + 2 * (k // 2) * dilation - dilation * (k - 1) - 1) // stride + 1 for s in (h, wd)]
    plan = Plan(n_slots=3, n_inputs=2, outputs=[2]).step(
        "pwdwpw", y=2, x=0, residual=1 if residual else -1, weight=pack_pointwise_weight(w(c, cin)), bias=w(c),
        activation="hardswish", dw_weight=w(c, 1, k, k), dw_bias=w(c), stride=[stride] * 2,
        padding=[k // 2 * dilation] * 2, dilation=[dilation] * 2, dw_activation="relu6",
        proj_weight=pack_pointwise_weight(w(cout, c)) if cout % 2 else w(cout, c), proj_bias=w(cout),
        proj_activation="relu" if residual else "identity")
    (y,) = assert_runs_as_reference([x, nhwc(n, cout, oh, ow)], plan)
    assert y.shape == (n, cout, oh, ow)


@pytest.mark.parametrize("width", [56, 13])
def test_pwdwpw_refuses_bad_projection_operands(width):
    """A projection over the wrong channel count, a residual of the wrong shape: clear
    errors that name the operand, on the fused path and on the two-op one alike."""
    x = nhwc(1, 8, 5, width)

    def plan(proj_weight, with_residual=False):
        return Plan(n_slots=3, n_inputs=2, outputs=[2]).step(
            "pwdwpw", y=2, x=0, residual=1 if with_residual else -1, weight=w(24, 8), bias=w(24),
            activation="relu", dw_weight=w(24, 1, 3, 3), dw_bias=w(24), stride=[1, 1], padding=[1, 1],
            dilation=[1, 1], dw_activation="relu", proj_weight=proj_weight, proj_bias=w(16),
            proj_activation="identity")

    bad = plan(w(16, 23))
    with pytest.raises(RuntimeError, match=r"proj_weight must be a float32 \[Cout, Cin\] matrix with Cin = 24"):
        run_plan([x, x], bad.tensors, bad.program)
    good = plan(w(16, 24), with_residual=True)
    with pytest.raises(RuntimeError, match="residual must be a tensor of the output's shape"):
        run_plan([x, nhwc(1, 16, 5, width - 1)], good.tensors, good.program)


# ---- malformed programs ----

def small_plan() -> tuple[list[torch.Tensor], Plan]:
    """x -> act -> pw -> add: slots 0 (input), 1, 2, 3."""
    plan = (Plan(n_slots=4, n_inputs=1, outputs=[3])
            .step("act", y=1, x=0, activation="relu")
            .step("pw", y=2, x=1, weight=w(6, 6), bias=w(6), activation="identity")
            .step("add", y=3, a=1, b=2))
    return [nhwc(1, 6, 3, 3)], plan


def _edit(fn):
    def edited():
        inputs, plan = small_plan()
        return inputs, plan.tensors, fn(plan)
    return edited


def _set(plan: Plan, index: int, value: int) -> list[int]:
    p = plan.program
    p[index] = value
    return p


BAD_PROGRAMS = {
    "no header": (_edit(lambda p: p.program[:HEADER_FIXED - 1]), "the program is shorter than its header"),
    "outputs cut": (_edit(lambda p: p.program[:HEADER_FIXED]), "the program is shorter than its header"),
    "too many inputs": (_edit(lambda p: _set(p, 1, 2)), "the program takes 2 inputs, got 1"),
    "output slot": (_edit(lambda p: _set(p, HEADER_FIXED, 9)), r"output slot 9 is out of range \(n_slots 4\)"),
    "slot range": (_edit(lambda p: _set(p, p.operand_at(1, "x"), 4)),
                   r"step 1 \(pw\): slot 4 is out of range \(n_slots 4\)"),
    "negative slot": (_edit(lambda p: _set(p, p.operand_at(0, "y"), -1)),
                      r"step 0 \(act\): slot -1 is out of range"),
    "read before written": (_edit(lambda p: _set(p, p.operand_at(1, "x"), 3)),
                            r"step 1 \(pw\) reads slot 3 before any step wrote it"),
    "reads its own output": (_edit(lambda p: _set(p, p.operand_at(2, "b"), 3)),
                             r"step 2 \(add\) reads slot 3 before any step wrote it"),
    "unknown code": (_edit(lambda p: p.program + [99]), "unknown step code 99"),
    "ends inside a step": (_edit(lambda p: p.program[:-1]), r"the program ends inside step 2 \(add\)"),
    "tensor index": (_edit(lambda p: _set(p, p.operand_at(1, "weight"), 50)),
                     r"step 1 \(pw\): tensor index 50 is out of range \(tensors has 2\)"),
    "output never written": (_edit(lambda p: p.program[:p.step_at(2)]), "output slot 3 is never written"),
    "bad act": (_edit(lambda p: _set(p, p.operand_at(0, "activation"), len(ACTIVATIONS))),
                rf"step 0 \(act\): bad act code {len(ACTIVATIONS)}"),
}


@pytest.mark.parametrize("case", list(BAD_PROGRAMS))
def test_run_plan_refuses_a_bad_program(case):
    from torch._subclasses.fake_tensor import FakeTensorMode

    make, match = BAD_PROGRAMS[case]
    inputs, tensors, program = make()
    with pytest.raises(RuntimeError, match="mnv3::run_plan: " + match):
        run_plan(inputs, tensors, program)
    # The fake kernel (the interpreter on the ops' fakes) refuses it with the same message.
    with FakeTensorMode() as mode, pytest.raises(ValueError, match="mnv3::run_plan: " + match):
        run_plan([mode.from_tensor(t) for t in inputs], [mode.from_tensor(t) for t in tensors], program)


def test_a_bad_gate_code_is_refused():
    x = torch.randn(2, 8)
    plan = Plan(n_slots=2, n_inputs=1, outputs=[1]).step("gate", g=1, mean=0, **se_weights(8, 4), gate="sigmoid")
    program = plan.program
    program[-1] = len(GATES)
    with pytest.raises(RuntimeError, match=rf"mnv3::run_plan: step 0 \(gate\): bad gate code {len(GATES)}"):
        run_plan([x], plan.tensors, program)


def test_a_bad_program_runs_no_step():
    """The whole program is checked before its first step runs: the first step's copy
    of its NCHW input (aten::copy_, the executor's one dispatcher call) never happens
    when a later step is malformed."""
    plan = (Plan(n_slots=3, n_inputs=1, outputs=[2])
            .step("act", y=1, x=0, activation="relu")
            .step("add", y=2, a=1, b=1))
    x = torch.randn(1, 8, 4, 4)

    def copies(program) -> int:
        with torch.profiler.profile() as prof:
            try:
                run_plan([x], plan.tensors, program)
            except RuntimeError as e:
                assert "unknown step code 99" in str(e)
        return sum(e.name == "aten::copy_" for e in prof.events())

    bad = plan.program
    bad[plan.step_at(1)] = 99
    assert copies(plan.program) >= 1 and copies(bad) == 0


def test_elementwise_steps_refuse_mismatched_operands():
    plan = Plan(n_slots=3, n_inputs=2, outputs=[2]).step("add", y=2, a=0, b=1)
    with pytest.raises(RuntimeError, match="add step needs two float32 tensors of one shape"):
        run_plan([torch.randn(2, 3), torch.randn(3, 2)], [], plan.program)
    plan = Plan(n_slots=2, n_inputs=1, outputs=[1]).step("act", y=1, x=0, activation="relu")
    with pytest.raises(RuntimeError, match="act step needs a float32 tensor, 2-d or 4-d"):
        run_plan([torch.randn(2, 3, 4)], [], plan.program)
    plan = Plan(n_slots=2, n_inputs=1, outputs=[1]).step("pool", y=1, x=0)
    with pytest.raises(RuntimeError, match="needs a float32 4-d input"):
        run_plan([torch.randn(2, 3)], [], plan.program)
