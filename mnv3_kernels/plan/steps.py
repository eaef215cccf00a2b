"""The plan's step table: the one definition of mnv3::run_plan's program.

A plan is a register machine over tensor values ("slots"): each step reads
slots, writes slots, and names its weights as indices into the plan's tensor
list.  The program is a flat list of ints:

    n_slots  n_inputs  n_outputs  out_slot * n_outputs      (the header)
    code  operand ... (STEPS[code].operands, in order)      (each step)

The inputs are slots 0 .. n_inputs-1; the op returns the output slots' values.
A slot is written by one step and may be rewritten by a later one (the
compiler reuses dead slots, so a forward keeps only live activations).

Operand kinds (how many ints each takes):
    out       1  the slot the step writes
    opt_out   1  a second output slot, -1: not wanted
    in        1  a slot the step reads
    opt_in    1  a slot the step reads, -1: none
    tensor    1  an index into the plan's tensors
    pair      2  two ints (stride, padding, dilation: [h, w])
    act       1  an activation code (vocabulary.ACTIVATIONS)
    gate      1  a gate code (vocabulary.GATES)
    flag      1  0 or 1

Everything that knows step codes or operand counts reads this table: the
Python interpreter (interpreter.py: reference and fake kernel), the compiler,
the C++ executor (csrc/cpu/run_plan_cpu.cpp, through the header
scripts/generate_headers.py writes from STEPS), tests and benchmarks.

This file imports nothing (setup.py loads it by path).
"""

from typing import NamedTuple

INT_COUNT = {"out": 1, "opt_out": 1, "in": 1, "opt_in": 1, "tensor": 1, "pair": 2, "act": 1, "gate": 1, "flag": 1}
HEADER_FIXED = 3  # n_slots, n_inputs, n_outputs (then the output slots)


class Step(NamedTuple):
    code: int
    name: str
    # The mnv3 op the step runs; a tuple: the ops it computes in turn (the CPU
    # executor may fuse them); None: arithmetic of the executor itself.
    op: str | tuple | None
    operands: tuple  # ((name, kind), ...) in program order
    doc: str

    @property
    def ops(self) -> tuple:
        """The mnv3 ops the step computes, in order."""
        return (self.op,) if isinstance(self.op, str) else tuple(self.op or ())

    @property
    def ints(self) -> int:
        """How many ints follow the step's code in the program."""
        return sum(INT_COUNT[kind] for _, kind in self.operands)


def _step(code, name, op, spec, doc):
    operands = tuple(tuple(item.split(":")) for item in spec.split())
    for _, kind in operands:
        assert kind in INT_COUNT, kind
    return Step(code, name, op, operands, doc)


STEPS = (
    _step(0, "conv", "conv_bias_act",
          "y:out x:in weight:tensor bias:tensor stride:pair padding:pair dilation:pair activation:act",
          "y = act(conv2d(x, weight) + bias), groups 1 (the stem); y channels-last"),
    _step(1, "dw", "dwconv_bias_act",
          "y:out mean:opt_out x:in weight:tensor bias:tensor stride:pair padding:pair dilation:pair activation:act",
          "y = act(depthwise_conv2d(x, weight) + bias); mean = y's fp32 spatial mean [N, C] when wanted"),
    _step(2, "pwdw", "pointwise_dwconv",
          "y:out mean:opt_out x:in weight:tensor bias:tensor activation:act dw_weight:tensor dw_bias:tensor "
          "stride:pair padding:pair dilation:pair dw_activation:act",
          "dw(pw(x)) in one pass: an inverted residual block's expand and depthwise convs"),
    _step(3, "pw", "pointwise_bias_act",
          "y:out x:in scale:opt_in residual:opt_in weight:tensor bias:tensor activation:act",
          "y = act((x * scale) @ weight.T + bias) + residual: a 1x1 conv on [N, C, H, W] or a Linear on [N, C]"),
    _step(4, "gate", "se_gate",
          "g:out mean:in w1:tensor b1:tensor w2:tensor b2:tensor gate:gate",
          "g = gate(relu(mean @ w1.T + b1) @ w2.T + b2): an SE block's [N, C] gate"),
    _step(5, "se", "se_excite_scale",
          "y:out x:in mean:opt_in w1:tensor b1:tensor w2:tensor b2:tensor gate:gate",
          "y = x * gate(...): the SE excite and scale (mean: x's squeeze, computed when -1)"),
    _step(6, "pool", None, "y:out x:in", "y = x's fp32 spatial mean [N, C] (global average pool + flatten)"),
    _step(7, "add", None, "y:out a:in b:in", "y = a + b"),
    _step(8, "act", None, "y:out x:in activation:act", "y = act(x)"),
    _step(9, "resize", None, "y:out x:in like:opt_in size:pair align_corners:flag",
          "y = bilinear interpolation of x (F.interpolate, antialias off) to like's H x W, or to size when like "
          "is -1"),
    _step(10, "pwdwpw", ("pointwise_dwconv", "pointwise_bias_act"),
          "y:out x:in residual:opt_in weight:tensor bias:tensor activation:act dw_weight:tensor dw_bias:tensor "
          "stride:pair padding:pair dilation:pair dw_activation:act proj_weight:tensor proj_bias:tensor "
          "proj_activation:act",
          "y = pw(pwdw(x), proj_weight, proj_bias, proj_activation) + residual: an inverted residual block "
          "without SE (the pwdw step, then the pw step on its output; the CPU executor runs both in one pass "
          "where the image is wide enough for pointwise_dwconv's ring walk)"),
)
BY_NAME = {s.name: s for s in STEPS}
assert [s.code for s in STEPS] == list(range(len(STEPS)))


def cpp_lines() -> list[str]:
    """The C++ declarations of the step table (for the generated header)."""
    lines = ["// mnv3::run_plan step codes (mnv3_kernels/plan/steps.py); operands in program order:"]
    lines += [f"//   {s.name:5s} {' '.join(f'{n}:{k}' for n, k in s.operands)}" for s in STEPS]
    members = ", ".join(f"kStep{s.name.capitalize()} = {s.code}" for s in STEPS)
    lines += [f"enum PlanStep : int64_t {{ {members} }};",
              f"inline constexpr int64_t kPlanStepCount = {len(STEPS)};",
              f"inline constexpr int64_t kPlanHeaderFixed = {HEADER_FIXED};",
              "// How many ints follow each step's code.",
              f"inline constexpr int64_t kPlanStepInts[] = {{{', '.join(str(s.ints) for s in STEPS)}}};",
              f"inline constexpr const char* kPlanStepNames[] = {{{', '.join(chr(34) + s.name + chr(34) for s in STEPS)}}};"]
    return lines
