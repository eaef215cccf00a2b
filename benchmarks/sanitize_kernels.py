"""One small call down every launch branch of the CUDA kernels, each checked
against the reference computed on CPU copies: the workload of
compute-sanitizer (memcheck, racecheck, synccheck) in the device check, so the
sanitizer sees mnv3's kernels only, no cuDNN or cuBLAS reference.  Run
memcheck with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so every tensor is its own
allocation and an out-of-bounds access cannot land in a neighbour's memory.

    python benchmarks/sanitize_kernels.py             on a GPU
    python benchmarks/sanitize_kernels.py --emulated  the same calls through the CUDA
                                                      emulator on the CPU, checking that
                                                      they reach every launch branch
                                                      (tests/op_cases.py LAUNCH_BRANCHES)

Prints "sanitize_kernels: start" once CUDA works under the sanitizer (the
device check reads a run without it as a sanitizer that refused the device).
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import mnv3_kernels  # noqa: E402,F401
from op_cases import (check_conv, check_dwconv, check_pointwise, check_pointwise_dwconv, check_se,  # noqa: E402
                      check_se_gate, dwconv_params, make_x, missed_launch_branches, pointwise_params, se_params)

DWCONV = [  # shape, dtype, layout, k, stride, dilation: launch branch
    ((2, 16, 9, 11), torch.float16, "channels_last", 3, 1, 1),     # NHWC 16-byte vectors, 3x3/1
    ((1, 16, 4, 4), torch.float16, "channels_last", 3, 1, 1),      # NHWC 16-byte vectors, one chunk
    ((1, 24, 10, 7), torch.float32, "channels_last", 5, 2, 1),     # NHWC float4 vectors, 5x5/2
    ((1, 512, 14, 14), torch.float32, "channels_last", 3, 1, 1),   # NHWC, many channel groups
    ((2, 13, 7, 5), torch.bfloat16, "channels_last", 3, 2, 1),     # NHWC scalar (C % 8 != 0)
    ((1, 3, 3, 3), torch.float32, "channels_last", 3, 1, 1),       # NHWC scalar, one chunk, tc < 32
    ((1, 16, 6, 6), torch.float16, "channels_last_offset", 5, 1, 1),  # NHWC scalar (unaligned)
    ((2, 8, 9, 9), torch.float32, "channels_last", 3, 1, 2),       # NHWC any geometry (dilation 2)
    ((1, 16, 130, 130), torch.float16, "channels_last", 3, 1, 1),  # many chunks, squeeze by the last block
    ((4, 64, 112, 112), torch.float16, "channels_last", 3, 1, 1),  # full 256-thread blocks
    ((2, 5, 8, 13), torch.float32, "nchw", 3, 2, 1),               # planes, unrolled tile, partial block
    ((1, 2, 40, 40), torch.float32, "nchw", 3, 1, 1),              # planes, full block
    ((1, 6, 9, 7), torch.float16, "strided_view", 7, 3, 1),        # planes, any geometry
]
SE = [  # shape, Cr, dtype, layout: launch branch
    ((2, 16, 5, 3), 8, torch.float16, "channels_last"),   # NHWC vectors
    ((1, 13, 4, 4), 8, torch.float32, "channels_last"),   # NHWC scalar
    ((2, 8, 4, 4), 4, torch.bfloat16, "nchw"),            # plane vectors
    ((1, 6, 3, 5), 4, torch.float32, "strided_view"),     # strided
    ((2, 96, 3, 3), 72, torch.float16, "channels_last"),  # excite over 3 groups, gate by the last block
]

POINTWISE = [  # x shape, Cout, dtype, layout, SE scale, residual: launch branch
    ((2, 40, 9, 9), 72, torch.float16, "channels_last", True, True),      # tensor cores, 16-byte vectors, 3 x 2 tiles
    ((1, 320, 3, 3), 24, torch.float32, "channels_last", True, False),    # SIMT fp32, 16-byte vectors, split K
    ((1, 13, 5, 5), 24, torch.bfloat16, "channels_last", False, True),    # scalar (Cin % 8 != 0)
    ((2, 24, 3, 3), 16, torch.float32, "channels_last_offset", True, False),  # scalar (unaligned)
    ((1, 480, 3, 5), 40, torch.float16, "channels_last", True, True),    # tensor cores, split K over 3 blocks
]

PWDW = [  # x shape, expanded C, k, stride, dtype: launch branch
    ((2, 16, 10, 9), 72, 3, 1, torch.float16),   # 16-byte vectors, many tiles (last block), 3 channel groups
    ((1, 13, 7, 7), 40, 5, 2, torch.float32),    # scalar (Cin % 4 != 0), one tile a sample
]


def run(device: str, ops) -> int:
    """Every call of DWCONV, SE (se_excite_scale and se_gate), the stem conv, POINTWISE and PWDW on
    `device` through `ops`; returns the call count."""
    g = torch.Generator().manual_seed(0)
    calls = 0
    for shape, dtype, layout, k, stride, dilation in DWCONV:
        x = make_x(shape, dtype, device, layout, g)
        w, b = dwconv_params(shape[1], k, dtype, device, g)
        for with_mean in (True, False):
            check_dwconv(x, w, b, stride, k // 2 * dilation, dilation, "hardswish", with_mean, ops=ops,
                         reference_on_cpu=True)
            calls += 1
    for shape, cr, dtype, layout in SE:
        x = make_x(shape, dtype, device, layout, g)
        pooled = x.float().mean(dim=(2, 3))
        weights = se_params(shape[1], cr, dtype, device, g)
        check_se(x, pooled, *weights, "sigmoid", ops=ops, reference_on_cpu=True)
        check_se_gate(pooled, *weights, "hardsigmoid", ops=ops, reference_on_cpu=True)
        calls += 2
    x = make_x((2, 3, 19, 17), torch.float16, device, "nchw", g)  # the stem: NCHW in, 13 channels (a partial group)
    w = (torch.randn(13, 3, 3, 3, generator=g) / 5).to(device, torch.float16)
    check_conv(x, w, torch.randn(13, generator=g).to(device, torch.float16), 2, 1, 1, "hardswish", ops=ops,
               reference_on_cpu=True)
    calls += 1
    for shape, cout, dtype, layout, with_scale, with_residual in POINTWISE:
        x = make_x(shape, dtype, device, layout, g)
        w, b = pointwise_params(shape[1], cout, dtype, device, g)
        scale = torch.rand(shape[0], shape[1], generator=g).to(device) if with_scale else None
        residual = (make_x((shape[0], cout, *shape[2:]), dtype, device, "channels_last", g)
                    if with_residual else None)
        check_pointwise(x, w, b, "hardswish", scale, residual, ops=ops, reference_on_cpu=True)
        calls += 1
    for shape, c, k, stride, dtype in PWDW:
        x = make_x(shape, dtype, device, "channels_last", g)
        w, b = pointwise_params(shape[1], c, dtype, device, g)
        dw_w, dw_b = dwconv_params(c, k, dtype, device, g)
        for with_mean in (True, False):
            check_pointwise_dwconv(x, w, b, "hardswish", dw_w, dw_b, stride, k // 2, 1, "relu", with_mean, ops=ops,
                                   reference_on_cpu=True)
            calls += 1
    return calls


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--emulated", action="store_true", help="run through the CUDA emulator on the CPU")
    args = p.parse_args()
    if args.emulated:
        from mnv3_kernels import emulated

        emulated.module().launch_log()  # start the log here
        calls = run("cpu", getattr(torch.ops, emulated.NAMESPACE))
        missed = missed_launch_branches(emulated.module().launch_log())
        if missed:
            sys.exit(f"sanitize_kernels: the workload misses launch branches: {missed}")
        print(f"sanitize_kernels: {calls} emulated kernel calls checked; every launch branch reached")
        return
    if not torch.cuda.is_available():
        sys.exit("sanitize_kernels: no GPU visible")
    torch.zeros(1, device="cuda").add_(1)
    torch.cuda.synchronize()
    print("sanitize_kernels: start", flush=True)
    calls = run("cuda", torch.ops.mnv3)
    torch.cuda.synchronize()
    print(f"sanitize_kernels: {calls} kernel calls checked")


if __name__ == "__main__":
    main()
