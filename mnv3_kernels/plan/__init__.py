"""The plan: one owner of the whole-forward program of mnv3 op steps.

  steps.py        the step table (codes, ops, operands): the program's definition
  interpreter.py  the Python interpreter: run_plan's reference and fake, and the
                  executor of a plan on any device (KernelOps: on the CUDA kernels)
  compiler.py     torch.fx graph of a model -> Plan (segments of steps on folded
                  weights, and the parts left to the original modules) for a
                  Target: CPU (mnv3::run_plan) or CUDA (the CUDA kernels)
  arena.py        a frozen plan's weights in one buffer on huge pages

The C++ executor is csrc/cpu/run_plan_cpu.cpp (mnv3::run_plan).
"""
