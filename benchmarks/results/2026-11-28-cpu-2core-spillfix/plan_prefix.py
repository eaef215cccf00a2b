"""Per-step time of MobileNetV3's CPU fast plan inside a whole forward, with no
timing build: runs mnv3::run_plan on growing prefixes of the plan's program, each
right after a whole forward (so the caches hold what a loop of forwards leaves in
them), and prints the shortest time of each prefix (the least disturbed by other load on the machine) and its growth.

    python plan_prefix.py large|small [rounds]
"""
import sys
import time

import torch

import mnv3_kernels as mk
from mnv3_kernels import reference as R

# Arguments after each step code (reference.py documents the program format).
ARITY = {R.PLAN_BLOCK: 0, R.PLAN_CONV: 9, R.PLAN_DW: 10, R.PLAN_PWDW: 13, R.PLAN_GATE: 5, R.PLAN_PW: 5,
         R.PLAN_POOL: 0}
NAMES = {R.PLAN_CONV: "conv_bias_act", R.PLAN_DW: "dwconv_bias_act", R.PLAN_PWDW: "pointwise_dwconv",
         R.PLAN_GATE: "se_gate", R.PLAN_PW: "pointwise_bias_act", R.PLAN_POOL: "pool"}

arch, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30
torch.set_num_threads(2)
model = getattr(mk, f"mobilenet_v3_{arch}")().eval()
x = torch.randn(1, 3, 224, 224)
run_plan = torch.ops.mnv3.run_plan.default
with torch.inference_mode():
    model(x)
    tensors, program = model._fast_plan().program
    cuts, pc = [], 0
    while pc < len(program):
        code = program[pc]
        pc += 1 + ARITY[code]
        if code in NAMES:
            cuts.append((pc, NAMES[code]))
    times = [[] for _ in cuts]
    for _ in range(rounds):
        for i, (end, _) in enumerate(cuts):
            run_plan(x, tensors, program)
            t0 = time.perf_counter_ns()
            run_plan(x, tensors, program[:end])
            times[i].append(time.perf_counter_ns() - t0)
print(f"| step | op | through it, best (us) | step (us) |\n|---|---|---|---|")
previous = 0.0
for i, ((_, name), t) in enumerate(zip(cuts, times)):
    best = min(t) / 1e3
    print(f"| {i} | {name} | {best:.0f} | {best - previous:.0f} |")
    previous = best
