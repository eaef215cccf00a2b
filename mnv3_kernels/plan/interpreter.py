"""The Python interpreter of a plan program (steps.py): mnv3::run_plan's
reference and its fake kernel, and the executor of a plan on any device.

interpret(inputs, tensors, program, ops) runs the program step by step, each
step calling `ops.<its op>` (steps.STEPS[code].op) with the decoded
arguments: with mnv3_kernels.reference it is the ground truth the C++
executor is tested against; with the mnv3 ops under fake tensors it is
run_plan's fake kernel (every step's own fake checks its arguments); with the
backend-dispatched functional ops it runs a plan on CUDA or in another dtype.
The steps without an op of their own (pool, add, act, resize) are computed
here, with the output layout the C++ executor gives them (channels-last dense
4-d, row-major 2-d); pwdwpw runs as its two ops, pointwise_dwconv then
pointwise_bias_act.
"""

from __future__ import annotations

import torch

from .. import layout, reference
from ..reference import ACTIVATION_FNS
from ..vocabulary import ACTIVATIONS, GATES
from .steps import HEADER_FIXED, STEPS


class ProgramError(ValueError):
    pass


def decode(program) -> tuple[int, int, list[int], list[tuple]]:
    """(n_slots, n_inputs, output slots, [(step, {operand: value})]) of a program;
    raises ProgramError for a malformed one.  Operand values are ints (pairs as
    lists); slots and tensor indices are checked against the header, not yet
    against the tensors."""
    program = [int(v) for v in program]
    if len(program) < HEADER_FIXED:
        raise ProgramError("mnv3::run_plan: the program is shorter than its header")
    n_slots, n_inputs, n_outputs = program[:HEADER_FIXED]
    pc = HEADER_FIXED + n_outputs
    if n_outputs < 0 or len(program) < pc or not 0 <= n_inputs <= n_slots:
        raise ProgramError("mnv3::run_plan: the program is shorter than its header")
    outputs = program[HEADER_FIXED:pc]
    for s in outputs:
        if not 0 <= s < n_slots:
            raise ProgramError(f"mnv3::run_plan: output slot {s} is out of range (n_slots {n_slots})")
    decoded = []
    while pc < len(program):
        code = program[pc]
        if not 0 <= code < len(STEPS):
            raise ProgramError(f"mnv3::run_plan: unknown step code {code}")
        step = STEPS[code]
        if pc + 1 + step.ints > len(program):
            raise ProgramError(f"mnv3::run_plan: the program ends inside step {len(decoded)} ({step.name})")
        pc += 1
        args = {}
        for name, kind in step.operands:
            if kind == "pair":
                args[name] = program[pc:pc + 2]
                pc += 2
                continue
            v = program[pc]
            pc += 1
            if kind in ("out", "in") and not 0 <= v < n_slots or kind in ("opt_out", "opt_in") and not -1 <= v < n_slots:
                raise ProgramError(f"mnv3::run_plan: step {len(decoded)} ({step.name}): slot {v} is out of range "
                                   f"(n_slots {n_slots})")
            if (kind == "act" and not 0 <= v < len(ACTIVATIONS) or kind == "gate" and not 0 <= v < len(GATES)
                    or kind == "flag" and v not in (0, 1)):
                raise ProgramError(f"mnv3::run_plan: step {len(decoded)} ({step.name}): bad {kind} code {v}")
            args[name] = v
        decoded.append((step, args))
    return n_slots, n_inputs, outputs, decoded


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """t as the C++ executor passes it to a step that reads channels-last rows."""
    if t.dim() != 4 or layout.is_nhwc_dense(t):
        return t
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last).copy_(t)


def _new_like_executor(y: torch.Tensor) -> torch.Tensor:
    """A new tensor of y's values in the executor's output layout (channels-last dense
    4-d, row-major 2-d)."""
    fmt = torch.channels_last if y.dim() == 4 else torch.contiguous_format
    return torch.empty(y.shape, dtype=y.dtype, device=y.device, memory_format=fmt).copy_(y)


def interpret(inputs, tensors, program, ops) -> list[torch.Tensor]:
    """Runs a plan program with `ops` (an object with the mnv3 op names as attributes)."""
    n_slots, n_inputs, outputs, decoded = decode(program)
    if n_inputs != len(inputs):
        raise ProgramError(f"mnv3::run_plan: the program takes {n_inputs} inputs, got {len(inputs)}")
    slots: list = [None] * n_slots
    slots[:n_inputs] = list(inputs)

    for i, (step, a) in enumerate(decoded):
        def read(name, optional=False):
            s = a[name]
            if optional and s == -1:
                return None
            if slots[s] is None:
                raise ProgramError(f"mnv3::run_plan: step {i} ({step.name}) reads slot {s} before any step wrote it")
            return slots[s]

        def tensor(name):
            k = a[name]
            if not 0 <= k < len(tensors):
                raise ProgramError(f"mnv3::run_plan: step {i} ({step.name}): tensor index {k} is out of range "
                                   f"(tensors has {len(tensors)})")
            return tensors[k]

        act = (lambda name: ACTIVATIONS[a[name]])
        op = getattr(ops, step.op) if isinstance(step.op, str) else None
        name = step.name
        if name == "conv":
            out = {"y": op(read("x"), tensor("weight"), tensor("bias"), a["stride"], a["padding"], a["dilation"],
                           act("activation"))}
        elif name == "dw":
            y, mean = op(read("x"), tensor("weight"), tensor("bias"), a["stride"], a["padding"], a["dilation"],
                         act("activation"), a["mean"] != -1)
            out = {"y": y, "mean": mean}
        elif name == "pwdw":
            y, mean = op(_nhwc(read("x")), tensor("weight"), tensor("bias"), act("activation"), tensor("dw_weight"),
                         tensor("dw_bias"), a["stride"], a["padding"], a["dilation"], act("dw_activation"),
                         a["mean"] != -1)
            out = {"y": y, "mean": mean}
        elif name == "pwdwpw":  # pwdw, then pw on its output (no op of its own)
            mid, _ = ops.pointwise_dwconv(_nhwc(read("x")), tensor("weight"), tensor("bias"), act("activation"),
                                          tensor("dw_weight"), tensor("dw_bias"), a["stride"], a["padding"],
                                          a["dilation"], act("dw_activation"), False)
            residual = read("residual", True)
            out = {"y": ops.pointwise_bias_act(mid, tensor("proj_weight"), tensor("proj_bias"),
                                               act("proj_activation"), None,
                                               None if residual is None else _nhwc(residual))}
        elif name == "pw":
            residual, w = read("residual", True), tensor("weight")
            x = _nhwc(read("x"))
            if x.dim() == 2 and x.dtype != w.dtype:  # a pooled value (fp32 means) read by a Linear in fp16 / bf16
                x = x.to(w.dtype)
            out = {"y": op(x, w, tensor("bias"), act("activation"), read("scale", True),
                           None if residual is None else _nhwc(residual))}
        elif name == "gate":
            out = {"g": op(read("mean"), tensor("w1"), tensor("b1"), tensor("w2"), tensor("b2"), GATES[a["gate"]])}
        elif name == "se":
            x, mean = read("x"), read("mean", True)
            if mean is None:
                mean = x.mean(dim=(2, 3), dtype=torch.float32)
            out = {"y": op(x, mean, tensor("w1"), tensor("b1"), tensor("w2"), tensor("b2"), GATES[a["gate"]])}
        elif name == "pool":
            out = {"y": _nhwc(read("x")).mean(dim=(2, 3), dtype=torch.float32)}
        elif name == "add":
            out = {"y": _new_like_executor(_nhwc(read("a")) + _nhwc(read("b")))}
        elif name == "act":
            out = {"y": _new_like_executor(ACTIVATION_FNS[act("activation")](_nhwc(read("x"))))}
        elif name == "resize":
            like = read("like", True)
            size = list(like.shape[-2:]) if like is not None else a["size"]
            x = read("x")
            if x.dim() != 4 or min(size) < 1 or (like is not None and like.dim() != 4):
                raise ProgramError(f"mnv3::run_plan: step {i} (resize) needs a 4-d x and an output size of at "
                                   f"least 1 x 1, got x {list(x.shape)} and size {size}")
            y = torch.nn.functional.interpolate(_nhwc(x), size=size, mode="bilinear",
                                                align_corners=bool(a["align_corners"]))
            out = {"y": _new_like_executor(y)}
        else:  # a step added to the table without its semantics here
            raise NotImplementedError(f"plan step {name!r} has no interpreter case")
        for key, value in out.items():
            if a.get(key, 0) != -1:  # opt_out -1: not wanted
                slots[a[key]] = value
    missing = [s for s in outputs if slots[s] is None]
    if missing:
        raise ProgramError(f"mnv3::run_plan: output slot {missing[0]} is never written")
    return [slots[s] for s in outputs]


class MnvOps:
    """The mnv3 ops by name (torch.ops.mnv3.<name>.default): under fake tensors each
    dispatches to its fake kernel, so the interpreter with these is run_plan's fake."""

    def __getattr__(self, name):
        return getattr(torch.ops.mnv3, name).default


class KernelOps:
    """A plan's ops on the handwritten CUDA kernels of `namespace`: torch.ops.mnv3 on
    CUDA tensors, or torch.ops.mnv3_emulated (the same kernels under the CUDA
    emulator) on CPU tensors.  conv, pwdw, dw, pw, gate and se run those kernels."""

    # Kernel launches per step on the CUDA kernels: conv, pwdw, pw and dw one each
    # (a squeeze over many blocks finishes in the same launch), the SE gate one (its
    # last block per sample finishes the gate), se two (the gate and the scale).
    # pool runs PyTorch's mean.
    LAUNCHES = {"conv": 1, "pwdw": 1, "pw": 1, "dw": 1, "gate": 1, "se": 2}

    def __init__(self, namespace):
        self.namespace = namespace

    def __getattr__(self, name):
        if name.startswith("__") or name == "namespace":  # copy / pickle before __init__
            raise AttributeError(name)
        return getattr(self.namespace, name).default


def run_reference(inputs, tensors, program) -> list[torch.Tensor]:
    """mnv3::run_plan's reference: the program on mnv3_kernels.reference's ops."""
    return interpret(inputs, tensors, program, reference)
