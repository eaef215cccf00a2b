"""torchvision's segmentation models on MobileNetV3-Large (dilated last stage):
eager vs mk.fuse(), NCHW and channels_last, batch 1, 2 threads.

    PYTHONPATH=. python benchmarks/fuse_segmentation.py                    # one run, the table to stdout
    PYTHONPATH=. python benchmarks/fuse_segmentation.py --runs 3 --out DIR # + DIR/results.json, DIR/speedup.png

(from the repository root; PYTHONPATH=. is not needed with the package installed).
Random weights with calibrated BatchNorm (no downloads); the variants of a model
are timed in interleaved rounds (torch.utils.benchmark, median of each round),
and the table gives the median over rounds.  fuse() replaces only the depthwise
and SE blocks; the rest of each model runs as torchvision's modules.
benchmarks/results/2026-11-28-cpu-2core-segmentation/ holds the published runs."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics

MODELS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")
LAYOUTS = ("nchw", "channels_last")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("size", nargs="?", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model and layout (default 5)")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing (default 0.5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--runs", type=int, default=1, help="measure everything this many times (default 1)")
    p.add_argument("--out", help="folder for results.json and speedup.png (created; nothing is written without it)")
    return p


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def environment() -> dict:
    import torch
    import torchvision

    import mnv3_kernels as mk
    from mnv3_kernels import _extension, bench

    return {
        "date": _now(),
        "cpu_model": _extension.cpu_model() if hasattr(_extension, "cpu_model") else None,
        "cpu_isa": _extension.cpu_isa() if hasattr(_extension, "cpu_isa") else None,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "mnv3_kernels": mk.__version__,
        "source_commit": bench._source_commit(),  # the CLI's record of the commit
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def measure(size: int, rounds: int, min_run_time: float, threads: int) -> list[dict]:
    """One run: per model and layout, eager and fused timed in `rounds` interleaved rounds."""
    import torch
    from torch.utils import benchmark
    from torchvision.models import segmentation

    import mnv3_kernels as mk
    from mnv3_kernels.testing import calibrate_batchnorm, randomize_batchnorm

    rows = []
    for name in MODELS:
        torch.manual_seed(0)
        model = getattr(segmentation, name)(weights=None, weights_backbone=None).eval()
        randomize_batchnorm(model)
        calibrate_batchnorm(model, torch.randn(2, 3, size, size))
        for layout in LAYOUTS:
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            m = model.to(memory_format=fmt)
            fused = mk.fuse(m)
            x = torch.randn(1, 3, size, size).contiguous(memory_format=fmt)
            times = {"eager": [], "fused": []}
            with torch.inference_mode():
                diff = (fused(x)["out"] - m(x)["out"]).abs().max().item()
                for _ in range(rounds):
                    for key, f in (("eager", m), ("fused", fused)):
                        t = benchmark.Timer("f(x)", globals={"f": f, "x": x}, num_threads=threads)
                        times[key].append(t.blocked_autorange(min_run_time=min_run_time).median * 1e3)
            e, f = statistics.median(times["eager"]), statistics.median(times["fused"])
            rows.append({"model": name, "layout": layout, "eager_ms": e, "fused_ms": f, "fused_vs_eager": e / f,
                         "max_abs_diff": diff})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model':32s} {'layout':14s} {'eager':>8s} {'fused':>8s} {'fused vs eager':>15s} {'max |diff|':>11s}"]
    for r in rows:
        lines.append(f"{r['model']:32s} {r['layout']:14s} {r['eager_ms']:8.2f} {r['fused_ms']:8.2f} "
                     f"{r['fused_vs_eager']:14.2f}x {r['max_abs_diff']:11.2e}")
    return "\n".join(lines)


def plot(data: dict, path: str) -> bool:
    """speedup.png: fused vs eager per model and layout, a bar per run; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = data["runs"]
    cases = [(r["model"], r["layout"]) for r in runs[0]["results"]]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, run in enumerate(runs):
        ratio = {(r["model"], r["layout"]): r["fused_vs_eager"] for r in run["results"]}
        xs = [c + (i - (len(runs) - 1) / 2) * width for c in range(len(cases))]
        ys = [ratio[c] for c in cases]
        bars = ax.bar(xs, ys, width, label=f"run {i + 1}, {run['date'][11:16]} UTC")
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{m.split('_')[0]}\n{layout}" for m, layout in cases])
    ax.set_ylabel("fused vs eager (eager ms / fused ms)")
    env, args = data["environment"], data["args"]
    commit = env["source_commit"][:7] if env.get("source_commit") else "not recorded"
    cpu = env.get("cpu_model") or "CPU model not recorded"
    ax.set_title(f"mk.fuse() on torchvision segmentation, {runs[0]['date'][:10]}: {cpu}\n"
                 f"torch {env['torch']}, {env['threads']} threads, 1x3x{args['size']}x{args['size']}, "
                 f"code {commit}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    env = environment()
    data = {"environment": env, "args": {"size": args.size, "rounds": args.rounds, "min_run_time": args.min_run_time,
                                         "threads": args.threads, "batch": 1, "models": list(MODELS),
                                         "layouts": list(LAYOUTS)},
            "runs": []}
    for i in range(args.runs):
        rows = measure(args.size, args.rounds, args.min_run_time, args.threads)
        data["runs"].append({"date": _now(), "results": rows})
        print(f"## run {i + 1}, {data['runs'][-1]['date']} (code {(env['source_commit'] or '?')[:7]})")
        print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{args.size}x{args.size}, "
              f"median ms over {args.rounds} interleaved rounds")
        print(format_table(rows), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        env["date"] = data["runs"][-1]["date"]
        env["loadavg"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
        drawn = plot(data, os.path.join(args.out, "speedup.png"))
        print(f"# wrote {args.out}/results.json"
              + (" and speedup.png" if drawn else " (no speedup.png: no matplotlib)"))


if __name__ == "__main__":
    main()
