"""Interleaved A/B of two builds of mnv3_kernels on the CPU: frozen models
(`mk.freeze(mk.fuse(model))`, the bench's models from mnv3_kernels/zoo.py;
default torchvision's MobileNetV3 Large and Small), timed in alternating
processes, A, B, A, B, ... so that a shared machine's drift falls on both
alike.

    python benchmarks/ab_builds.py --a /path/to/old/checkout --b . --pairs 8
    python benchmarks/ab_builds.py --a . --b . --env-b MNV3_CPU_ISA=avx2   # two levels of one build
    python benchmarks/ab_builds.py --a OLD --b . --models mnasnet lcnet --batch 1

Each side is a checkout with its extension built in place (`python setup.py
build_ext --inplace` or `pip install --no-build-isolation -e .`), imported
through PYTHONPATH.  Per process and case: the fastest and the median of
--rounds rounds of calls.  Printed per case: the median over processes of each
side's per-process fastest round, B / A, and in how many pairs B was faster.
The numbers are for one machine and one run; the CPU model and each side's
ISA level are printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import json, sys, time, torch
import mnv3_kernels as mk
from mnv3_kernels import _extension, zoo
torch.set_num_threads(THREADS)
isa = _extension.cpu_isa() if hasattr(_extension, "cpu_isa") else None  # None: a build before the ISA levels
cpu = _extension.cpu_model() if hasattr(_extension, "cpu_model") else "?"
out = {"cpu": cpu, "isa": (isa or {}).get("level", "target_clones"), "file": mk.__file__, "cases": {}}
with torch.inference_mode():
    for name, batch in CASES:
        frozen = mk.freeze(mk.fuse(zoo.build(name, 0)))
        x = torch.randn(batch, 3, SIZE, SIZE)
        calls = max(1, round(20 / batch))
        for _ in range(3):
            frozen(x)
        times = []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            for _ in range(calls):
                frozen(x)
            times.append((time.perf_counter() - t) / calls * 1e3)
        out["cases"][f"{name} b{batch}"] = [min(times), statistics.median(times)]
print(json.dumps(out))
"""


def _run(path: str, env_extra: dict, args) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(path), **env_extra)
    code = (_CHILD.replace("THREADS", str(args.threads)).replace("ROUNDS", str(args.rounds))
            .replace("SIZE", str(args.size))
            .replace("CASES", repr([(m, b) for m in args.models for b in args.batch])))
    r = subprocess.run([sys.executable, "-c", "import statistics\n" + code], capture_output=True, text=True,
                       env=env, cwd=os.path.abspath(path), timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"side at {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _env_pairs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env-a / --env-b take NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="checkout A (built in place)")
    p.add_argument("--b", required=True, help="checkout B (built in place)")
    p.add_argument("--env-a", nargs="*", default=[], help="NAME=VALUE for A's processes")
    p.add_argument("--env-b", nargs="*", default=[], help="NAME=VALUE for B's processes")
    p.add_argument("--models", nargs="+", default=["large", "small"], help="models of mnv3_kernels/zoo.py")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8], help="batch sizes")
    p.add_argument("--pairs", type=int, default=8, help="A/B process pairs")
    p.add_argument("--rounds", type=int, default=12, help="timed rounds per case and process")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    env_a, env_b = _env_pairs(args.env_a), _env_pairs(args.env_b)
    runs = {"A": [], "B": []}
    for i in range(args.pairs):
        for side, path, env in (("A", args.a, env_a), ("B", args.b, env_b)):
            runs[side].append(_run(path, env, args))
            print(f"pair {i + 1}/{args.pairs} {side}: " +
                  ", ".join(f"{k} {v[0]:.3f}" for k, v in runs[side][-1]["cases"].items()), file=sys.stderr)
    first_a, first_b = runs["A"][0], runs["B"][0]
    print(f"# {first_b['cpu'] if first_a['cpu'] == '?' else first_a['cpu']}, {args.threads} threads, {args.pairs} interleaved pairs x {args.rounds} rounds")
    print(f"# A: {args.a} {' '.join(args.env_a)} (ISA {first_a['isa']}); B: {args.b} {' '.join(args.env_b)} "
          f"(ISA {first_b['isa']})")
    print(f"{'case':16s} {'A ms':>8s} {'B ms':>8s} {'B / A':>7s} {'B faster':>9s}")
    for case in first_a["cases"]:
        a = [r["cases"][case][0] for r in runs["A"]]
        b = [r["cases"][case][0] for r in runs["B"]]
        ma, mb = statistics.median(a), statistics.median(b)
        wins = sum(y < x for x, y in zip(a, b))
        print(f"{case:16s} {ma:8.3f} {mb:8.3f} {mb / ma:7.3f} {wins:>4d}/{len(a)}")


if __name__ == "__main__":
    main()
