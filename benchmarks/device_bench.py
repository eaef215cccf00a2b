"""Short benchmark for the device check: eager torchvision MobileNetV3 vs the
fused model (mnv3_kernels), Large and Small, batch 1 and 64, fp16 and fp32,
plus CUDA-graph replay of the fused model at batch 1.  Median ms per forward.

    python benchmarks/device_bench.py                       # CUDA
    python benchmarks/device_bench.py --device cpu --quick  # CPU smoke check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="few iterations, small batches: a smoke check")
    p.add_argument("--archs", default="large,small")
    p.add_argument("--batches", default=None, help="comma list (default 1,64; --quick: 1,2)")
    p.add_argument("--dtypes", default=None, help="comma list of fp16,fp32 (default both on cuda, fp32 on cpu)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    return p.parse_args(argv)


def load_models():
    """(torchvision.models, mnv3_kernels), or exit with a clear message."""
    try:
        import torchvision.models as tv_models
    except ImportError:
        print("device_bench: torchvision is not installed; nothing to compare against (skipped)")
        sys.exit(0)
    import mnv3_kernels as mk

    for name in ("mobilenet_v3_large", "mobilenet_v3_small", "fuse"):
        if not callable(getattr(mk, name, None)):
            sys.exit(f"device_bench: mnv3_kernels.{name} is missing: the fused model is not on this branch yet")
    probe = mk.mobilenet_v3_small()
    if not isinstance(probe, torch.nn.Module):
        sys.exit("device_bench: mnv3_kernels.mobilenet_v3_small() does not build a torch.nn.Module "
                 f"(got {type(probe).__name__}): the fused model is not on this branch yet")
    return tv_models, mk


def fused_from(mk, arch, tv):
    """mk.fuse(torchvision model); else the drop-in model loading torchvision's weights."""
    try:
        return mk.fuse(tv)
    except NotImplementedError:
        model = getattr(mk, f"mobilenet_v3_{arch}")()
        model.load_state_dict(tv.state_dict())
        return model.eval()


class Timer:
    def __init__(self, device, quick):
        self.device = device
        self.warmup, self.iters, self.reps = (2, 3, 3) if quick else (10, 20, 5)

    def median_ms(self, fn):
        for _ in range(self.warmup):
            fn()
        samples = []
        for _ in range(self.reps):
            if self.device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(self.iters):
                    fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / self.iters)
            else:
                t0 = time.perf_counter()
                for _ in range(self.iters):
                    fn()
                samples.append((time.perf_counter() - t0) * 1e3 / self.iters)
        return statistics.median(samples)


def graph_replay(model, x):
    """A callable replaying a CUDA graph of model(x)."""
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    return graph.replay


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("device_bench: --device cuda but no GPU is visible (use --device cpu --quick for a smoke check)")
    tv_models, mk = load_models()
    dtypes = {"fp16": torch.float16, "fp32": torch.float32}
    dtype_names = (args.dtypes or ("fp16,fp32" if args.device == "cuda" else "fp32")).split(",")
    batches = [int(b) for b in (args.batches or ("1,2" if args.quick else "1,64")).split(",")]
    timer = Timer(args.device, args.quick)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}")
    results = []
    header = f"{'model':6s} {'dtype':5s} {'batch':>5s} {'torchvision ms':>15s} {'fused ms':>9s} {'speedup':>8s} {'fused graph ms':>15s}"
    print(header)
    for arch in args.archs.split(","):
        for dname in dtype_names:
            dtype = dtypes[dname]
            torch.manual_seed(0)
            tv = getattr(tv_models, f"mobilenet_v3_{arch}")(weights=None).eval()
            fused = fused_from(mk, arch, tv)
            tv = tv.to(args.device, dtype)
            fused = fused.to(args.device, dtype).to(memory_format=torch.channels_last)
            for batch in batches:
                x = torch.randn(batch, 3, 224, 224, device=args.device, dtype=dtype)
                xcl = x.contiguous(memory_format=torch.channels_last)
                row = {"model": arch, "dtype": dname, "batch": batch}
                with torch.inference_mode():
                    row["torchvision_ms"] = timer.median_ms(lambda: tv(x))
                    row["fused_ms"] = timer.median_ms(lambda: fused(xcl))
                    row["fused_graph_ms"] = None
                    if args.device == "cuda" and batch == 1:
                        row["fused_graph_ms"] = timer.median_ms(graph_replay(fused, xcl))
                row["speedup"] = row["torchvision_ms"] / row["fused_ms"]
                results.append(row)
                graph_ms = "-" if row["fused_graph_ms"] is None else f"{row['fused_graph_ms']:.3f}"
                print(f"{arch:6s} {dname:5s} {batch:5d} {row['torchvision_ms']:15.3f} {row['fused_ms']:9.3f} "
                      f"{row['speedup']:7.2f}x {graph_ms:>15s}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
