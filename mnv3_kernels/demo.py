"""`python -m mnv3_kernels.demo`: run the fused MobileNetV3 on the default device
(CUDA if present, else CPU), check it against torchvision's, and time both.

Random weights with randomized BatchNorm statistics (no download needed); the
check is the max |logit difference|, the timing the median of
torch.utils.benchmark's blocked_autorange.
"""

from __future__ import annotations

import argparse

import torch
import torch.utils.benchmark as benchmark

import mnv3_kernels as mk
from mnv3_kernels import backends
from mnv3_kernels.testing import randomize_batchnorm, randomize_classifier


def _median_ms(fn, x, min_run_time: float) -> float:
    timer = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    args = parser.parse_args(argv)
    try:
        import torchvision.models as tvm
    except ImportError:
        raise SystemExit("the demo compares against torchvision: pip install torchvision") from None

    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"ops backend: {backends.resolve(device).value}")
    print(f"{'model':24s} {'batch':>5s} {'torchvision ms':>14s} {'fused ms':>9s} {'speedup':>8s} {'max|diff|':>10s}")
    gen = torch.Generator().manual_seed(0)
    for arch in ("mobilenet_v3_large", "mobilenet_v3_small"):
        tv = getattr(tvm, arch)()
        randomize_batchnorm(tv, gen)
        randomize_classifier(tv, gen)
        ours = mk.fuse(tv).to(device).eval()
        tv = tv.to(device).eval()
        x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
        with torch.inference_mode():
            diff = (ours(x) - tv(x)).abs().max().item()
            t_tv = _median_ms(tv, x, args.min_run_time)
            t_ours = _median_ms(ours, x, args.min_run_time)
        print(f"{arch:24s} {args.batch:5d} {t_tv:14.2f} {t_ours:9.2f} {t_tv / t_ours:7.2f}x {diff:10.2e}")


if __name__ == "__main__":
    main()
