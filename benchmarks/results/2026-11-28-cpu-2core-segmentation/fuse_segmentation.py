"""torchvision's segmentation models on MobileNetV3-Large (dilated last stage):
eager vs mk.fuse(), NCHW and channels_last, batch 1, 2 threads.

Run with the package installed (or PYTHONPATH=. from the repository root): python benchmarks/results/2026-11-28-cpu-2core-segmentation/fuse_segmentation.py
Random weights with calibrated BatchNorm (no downloads); the variants of a model
are timed in interleaved rounds (torch.utils.benchmark, median of each round),
and the table gives the median over rounds.  fuse() replaces only the depthwise
and SE blocks; the rest of each model runs as torchvision's modules."""

import statistics
import sys

import torch
from torch.utils import benchmark
from torchvision.models import segmentation

import mnv3_kernels as mk
from mnv3_kernels.testing import calibrate_batchnorm, randomize_batchnorm

ROUNDS, SIZE = 5, int(sys.argv[1]) if len(sys.argv) > 1 else 224
torch.set_num_threads(2)
print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{SIZE}x{SIZE}, "
      f"median ms over {ROUNDS} interleaved rounds")
print(f"{'model':32s} {'layout':14s} {'eager':>8s} {'fused':>8s} {'fused vs eager':>15s} {'max |diff|':>11s}")
for name in ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"):
    torch.manual_seed(0)
    model = getattr(segmentation, name)(weights=None, weights_backbone=None).eval()
    randomize_batchnorm(model)
    calibrate_batchnorm(model, torch.randn(2, 3, SIZE, SIZE))
    for layout in ("nchw", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        m = model.to(memory_format=fmt)
        fused = mk.fuse(m)
        x = torch.randn(1, 3, SIZE, SIZE).contiguous(memory_format=fmt)
        times = {"eager": [], "fused": []}
        with torch.inference_mode():
            diff = (fused(x)["out"] - m(x)["out"]).abs().max().item()
            for _ in range(ROUNDS):
                for key, f in (("eager", m), ("fused", fused)):
                    t = benchmark.Timer("f(x)", globals={"f": f, "x": x}, num_threads=2)
                    times[key].append(t.blocked_autorange(min_run_time=0.5).median * 1e3)
        e, f = statistics.median(times["eager"]), statistics.median(times["fused"])
        print(f"{name:32s} {layout:14s} {e:8.2f} {f:8.2f} {e / f:14.2f}x {diff:11.2e}")
