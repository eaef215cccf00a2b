"""Estimates, by reading (no GPU runs here): the kernel launches and the bytes
each one moves in a MobileNetV3 forward on CUDA, the plan on the CUDA kernels
(plan.compiler.CUDA, launches per step from interpreter.KernelOps.LAUNCHES)
against eager PyTorch (each aten op that is not a view: at least one launch).

Bytes are each launch's operands once (activations read and written, weights
read): the traffic of a kernel that reads every input once from DRAM, the
least it can move; L2 hits at batch 1 make real traffic lower for weights,
and cuDNN may launch more than one kernel per convolution.  Both forwards run
on meta tensors (shapes only), fp16, channels-last.

    python benchmarks/cuda_plan_traffic.py [--model large] [--batch 1 256] [--size 224] [--per-step]
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mnv3_kernels import reference, zoo
from mnv3_kernels.plan import compiler, interpreter


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class _EagerOps(TorchDispatchMode):
    """Each non-view aten op: (name, bytes of its tensor arguments and results)."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.__name__ not in ("detach.default", "empty.memory_format", "empty_strided.default"):
            ins, _ = tree_flatten((args, kwargs))
            outs, _ = tree_flatten(out)
            self.ops.append((func.__name__, _bytes(ins) + _bytes(outs)))
        return out


class _PlanOps:
    """The reference ops (shapes on meta), recording per step (step, launches, operand
    bytes): launches from KernelOps.LAUNCHES where a CUDA kernel runs the step, else
    the aten ops the reference runs (a step KernelOps.LAUNCHES does not list)."""

    def __init__(self):
        self.steps: list[tuple[str, int, int]] = []
        self.step_of = {s.op: s.name for s in interpreter.STEPS if isinstance(s.op, str)}

    def __getattr__(self, name):
        fn = getattr(reference, name)
        step = self.step_of[name]

        def call(*args):
            mode = _EagerOps()
            with mode:
                out = fn(*args)
            ins, _ = tree_flatten(list(args))
            outs, _ = tree_flatten(out)
            launches = interpreter.KernelOps.LAUNCHES.get(step, len(mode.ops))
            self.steps.append((step, launches, _bytes(ins) + _bytes(outs)))
            return out

        return call


def estimate(model_name: str, batch: int, size: int) -> dict:
    model = zoo.build(model_name, seed=0).eval()
    with torch.no_grad():
        plan = compiler.compile_model(model, compiler.CUDA)
    (segment,) = plan.segments
    x = torch.empty(batch, 3, size, size, device="meta", dtype=torch.float16)
    ops = _PlanOps()
    with torch.no_grad():
        interpreter.interpret([x], [t.to("meta", torch.float16) for t in segment.tensors], segment.program, ops)
    plan_rows = ops.steps  # the steps the interpreter computes itself (pool) go through no op: counted below
    eager_model = model.to(device="meta", dtype=torch.float16, memory_format=torch.channels_last)
    mode = _EagerOps()
    with torch.no_grad(), mode:
        eager_model(x.contiguous(memory_format=torch.channels_last))
    return {"plan": plan_rows, "plan_steps": segment.steps, "eager": mode.ops}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="large")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 256])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--per-step", action="store_true", help="also each step of the plan: launches and MB")
    args = p.parse_args()
    for n in args.batch:
        r = estimate(args.model, n, args.size)
        plan_launches = sum(launch for _, launch, _ in r["plan"])
        plan_launches += sum(1 for s in r["plan_steps"] if s == "pool")  # one aten mean each, bytes not counted
        plan_mb = sum(b for *_, b in r["plan"]) / 2**20
        by_step = collections.defaultdict(lambda: [0, 0, 0])
        for step, launch, b in r["plan"]:
            by_step[step][0] += 1
            by_step[step][1] += launch
            by_step[step][2] += b
        eager_mb = sum(b for _, b in r["eager"]) / 2**20
        eager_ops = collections.Counter(name for name, _ in r["eager"])
        print(f"{args.model} fp16 channels-last {args.size}x{args.size}, batch {n} (estimates, by reading)")
        print(f"  plan on the CUDA kernels: {plan_launches} launches, {plan_mb:.1f} MB moved")
        for step, (count, launch, b) in sorted(by_step.items()):
            print(f"    {step:5s} {count:3d} steps {launch:3d} launches {b / 2**20:9.1f} MB")
        if args.per_step:
            for i, (step, launch, b) in enumerate(r["plan"]):
                print(f"      {i:3d} {step:5s} {launch} launch(es) {b / 2**20:8.2f} MB")
        print(f"  eager: {len(r['eager'])} aten ops (launches, at least), {eager_mb:.1f} MB moved")
        for name, count in eager_ops.most_common():
            print(f"    {name:45s} {count:3d}")


if __name__ == "__main__":
    main()
