"""One small call down every CUDA kernel path, checked against the reference:
the workload for `compute-sanitizer --tool memcheck` in the device check (run
it with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so every tensor is its own allocation
and an out-of-bounds access cannot land in a neighbour's memory)."""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import mnv3_kernels  # noqa: E402,F401
from op_cases import check_dwconv, check_se, dwconv_params, make_x, se_params  # noqa: E402

DEV = "cuda"


def main():
    if not torch.cuda.is_available():
        sys.exit("sanitize_kernels: no GPU visible")
    g = torch.Generator().manual_seed(0)
    dwconv = [  # shape, dtype, layout, k, stride, dilation: path
        ((2, 16, 9, 11), torch.float16, "channels_last", 3, 1, 1),     # NHWC 16-byte vectors, 3x3/1
        ((1, 24, 10, 7), torch.float32, "channels_last", 5, 2, 1),     # NHWC float4 vectors, 5x5/2
        ((2, 13, 7, 5), torch.bfloat16, "channels_last", 3, 2, 1),     # NHWC scalar (C % 8 != 0)
        ((1, 16, 6, 6), torch.float16, "channels_last_offset", 5, 1, 1),  # NHWC scalar (unaligned)
        ((2, 8, 9, 9), torch.float32, "channels_last", 3, 1, 2),       # NHWC any geometry (dilation 2)
        ((1, 16, 130, 130), torch.float16, "channels_last", 3, 1, 1),  # partial sums + reduce pass
        ((2, 5, 8, 13), torch.float32, "nchw", 3, 2, 1),               # planes, unrolled tile
        ((1, 6, 9, 7), torch.float16, "strided_view", 7, 3, 1),        # planes, any geometry
    ]
    for shape, dtype, layout, k, stride, dilation in dwconv:
        x = make_x(shape, dtype, DEV, layout, g)
        w, b = dwconv_params(shape[1], k, dtype, DEV, g)
        for with_mean in (True, False):
            check_dwconv(x, w, b, stride, k // 2 * dilation, dilation, "hardswish", with_mean)
    se = [  # shape, Cr, dtype, layout: path
        ((2, 16, 5, 3), 8, torch.float16, "channels_last"),   # NHWC vectors
        ((1, 13, 4, 4), 8, torch.float32, "channels_last"),   # NHWC scalar
        ((2, 8, 4, 4), 4, torch.bfloat16, "nchw"),            # plane vectors
        ((1, 6, 3, 5), 4, torch.float32, "strided_view"),     # strided
    ]
    for shape, cr, dtype, layout in se:
        x = make_x(shape, dtype, DEV, layout, g)
        check_se(x, x.float().mean(dim=(2, 3)), *se_params(shape[1], cr, dtype, DEV, g), "sigmoid")
    torch.cuda.synchronize()
    print(f"sanitize_kernels: {len(dwconv) * 2 + len(se)} kernel calls checked")


if __name__ == "__main__":
    main()
