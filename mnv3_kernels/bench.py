"""`python -m mnv3_kernels.bench`: how much faster is the fused MobileNetV3 (or
another MobileNet-family model, --models) than what you use today, on this machine?

Side by side in one run, on the default device (CUDA if present, else CPU):
the model in eager mode (NCHW and channels_last), torch.compile of it
(CPU: inductor with freezing; CUDA: mode="reduce-overhead"), ONNX Runtime (CPU,
when installed), and the fused model (mk.fuse) on every available backend (plus
its CUDA-graph replay on CUDA; and mnv3_kernels.freeze's frozen model,
fused-native-frozen: weights folded once without the live model's per-forward
check for changed weights, as compile's freezing and ONNX Runtime take them;
fp32 on CPU, on CUDA the plan on the CUDA kernels replayed as a CUDA graph).
The models (mnv3_kernels/zoo.py): random weights with randomized
BatchNorm statistics, nothing downloaded; each variant's output (a segmentation
model's "out" map) is checked against eager before it is timed
(tolerances: mnv3_kernels/tolerances.py).  Timing: torch.utils.benchmark's
blocked_autorange (warm-up first; CUDA synchronized), in --rounds rounds that
visit every variant of a case in turn, merged per variant (Measurement.merge):
on a shared machine whose speed drifts over seconds, each variant then sees the
same mix of fast and slow spells instead of one spell of its own.  Writes a
table to stdout and results.json (+ speedup.png with matplotlib) to --out.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

import torch

import mnv3_kernels as mk
from mnv3_kernels import backends, tolerances, zoo
from mnv3_kernels._extension import cpu_isa, cpu_model
from mnv3_kernels.zoo import Unavailable, output_tensor

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Result:
    model: str
    batch: int
    dtype: str
    variant: str
    median_ms: float | None = None
    iqr_ms: float | None = None
    images_per_s: float | None = None
    speedup_vs_eager: float | None = None
    max_abs_diff: float | None = None
    status: str = "ok"
    notes: list[str] = field(default_factory=list)

    def failed(self, e: Exception) -> None:
        """Records an exception of this variant (one failing variant must not lose the
        run's other numbers)."""
        self.status, self.notes = "error", [f"{type(e).__name__}: {e}".splitlines()[0]]


# Every variant the bench knows, in table order, with what it times.
VARIANTS = {
    "eager": "the model as it comes (NCHW): the baseline of every speedup",
    "eager_cl": "the model in channels_last",
    "compile": "torch.compile of the model (CPU: inductor with freezing; CUDA: mode='reduce-overhead')",
    "onnxruntime": "ONNX Runtime's CPU session of the exported model (CPU, fp32; needs onnxruntime, onnx, onnxscript)",
    "fused-native": "mk.fuse(model) on mnv3's C++/CUDA kernels",
    "fused-native-frozen": "mk.freeze(mk.fuse(model)): fused, weights frozen once (CPU: fp32, one run_plan call; "
                           "CUDA: the plan on mnv3's CUDA kernels, every step but the pool's mean, replayed as a "
                           "CUDA graph)",
    "fused-native-graph": "mk.fuse(model) on the CUDA kernels, replayed as a CUDA graph (CUDA)",
    "fused-triton": "mk.fuse(model) on the Triton kernels (CUDA)",
    "fused-triton-graph": "mk.fuse(model) on the Triton kernels, replayed as a CUDA graph (CUDA)",
}
# What a run times without --variants, per device type.
DEFAULT_VARIANTS = {
    "cpu": ["eager", "eager_cl", "compile", "onnxruntime", "fused-native", "fused-native-frozen"],
    "cuda": ["eager", "eager_cl", "compile", "fused-native", "fused-native-graph", "fused-triton",
             "fused-triton-graph", "fused-native-frozen"],
}


def unavailable_reason(variant: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why `variant` cannot run on this device and dtype here, or None when it can.
    The table lists such a variant with the reason instead of dropping it."""
    if variant == "onnxruntime":
        if device.type != "cpu":
            return "ONNX Runtime is timed on CPU only"
        if dtype != torch.float32:
            return "ONNX Runtime is timed in fp32 only"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime onnx onnxscript)"
        return None
    if variant.endswith("-graph") and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if variant == "fused-native-frozen" and device.type == "cpu" and dtype != torch.float32:
        return "mk.freeze on CPU is the fp32 fast path"
    if variant.startswith(("fused-", "plan-")):
        ok, why = backends.availability(backends.Backend(variant.split("-")[1]), device.type)
        return None if ok else why
    return None


def _model(name: str, seed: int) -> torch.nn.Module:
    """zoo.MODELS[name], built for one case (eval, fp32, CPU; the same weights every
    run of a seed).  Raises zoo.Unavailable when it cannot be built here."""
    return zoo.build(name, seed)


class _TensorOutput(torch.nn.Module):
    """model with output_tensor(model(x)) as its output: what ONNX export takes (a
    segmentation model's dict becomes its "out" map; a tensor stays as it is)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.training = model.training  # the exporter warns about a wrapper left in train mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return output_tensor(self.model(x))


def _onnxruntime_runner(model: torch.nn.Module, x: torch.Tensor):
    try:
        import onnxruntime as ort
    except ImportError:
        raise Unavailable("onnxruntime is not installed (pip install '.[bench]')") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    # The exported file (tens of MB of weights) only until the session has loaded it.
    with tempfile.TemporaryDirectory(prefix="mnv3_bench_") as folder:
        path = os.path.join(folder, "model.onnx")
        try:
            torch.onnx.export(_TensorOutput(model), (x,), path, dynamo=True, verbose=False)
        except Exception as e:  # exporter missing (onnxscript) or failing: report, don't crash the run
            raise Unavailable(f"torch.onnx.export failed: {type(e).__name__}: {e}".splitlines()[0]) from None
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(inp: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: inp.numpy()})[0])

    return run


def _cuda_graph_runner(fn, x: torch.Tensor):
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside capture (allocations, lazy init)
            fn(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_x)

    def run(inp: torch.Tensor) -> torch.Tensor:
        static_x.copy_(inp)
        graph.replay()
        return static_out

    return run


def _runner(variant: str, model: torch.nn.Module, device: torch.device, x: torch.Tensor,
            notes: list[str] | None = None):
    """A callable x -> the model's output for one variant (models already on
    device/dtype; a dict for a segmentation model: compare through output_tensor).
    Every variant of a case exists at once (they are timed in rounds): none may
    change model, which the eager variant runs.  The fused variants append to notes
    how many blocks fuse() fused (a model it fuses little of is not expected to get
    faster, and the table should say so)."""
    if variant == "eager":
        return model
    if variant == "eager_cl":
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)  # Module.to converts in place
        return lambda inp: model_cl(inp.contiguous(memory_format=torch.channels_last))
    if variant == "compile":
        if device.type == "cuda":
            return torch.compile(copy.deepcopy(model), mode="reduce-overhead")
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights as constants: conv weight prepacking, BN folding
        return torch.compile(copy.deepcopy(model))
    if variant == "onnxruntime":
        return _onnxruntime_runner(model, x)
    if not variant.startswith("fused-"):
        raise ValueError(variant)
    fused = mk.fuse(model)  # on a copy
    report = getattr(fused, "mnv3_fuse_report", None)
    if notes is not None and report is not None:
        notes.append(f"fused {report.count('dwconv')} dwconv + {report.count('se')} SE blocks")
    if variant == "fused-native-frozen":
        try:
            return mk.freeze(fused)
        except Exception as e:  # a model freeze() does not take: a reason in the table, not a failed run
            raise Unavailable(f"{type(e).__name__}: {e}".splitlines()[0]) from None
    backend = variant.split("-")[1]

    def run(inp: torch.Tensor):
        with mk.use_backend(backend):
            return fused(inp)

    return _cuda_graph_runner(run, x) if variant.endswith("-graph") else run


def _check(variant: str, out: torch.Tensor, eager: torch.Tensor, eager_fp32: torch.Tensor,
           dtype: torch.dtype) -> tuple[bool, float | None, str]:
    """(ok, max |diff| (None when the shapes differ), note) of one variant's output
    tensor against eager's."""
    if out.shape != eager_fp32.shape:
        return False, None, f"output shape {list(out.shape)} vs eager's {list(eager_fp32.shape)}"
    if dtype == torch.float32:
        ok, diff, bound = tolerances.model_close(out, eager_fp32)
    else:
        diff = (out.float() - eager_fp32).abs().max().item()
        bound = tolerances.lowp_error_bound(eager, eager_fp32, dtype)
        ok = diff <= bound
    return ok, diff, f"max|diff| {diff:.2e} vs bound {bound:.2e}"


def _measure(fn, x: torch.Tensor, min_run_time: float):
    import torch.utils.benchmark as benchmark  # imports cpp_extension, which warns about CUDA_HOME

    # Timer runs with 1 thread unless told: every variant gets torch's thread count
    # (the one ONNX Runtime's session was given), so all of them share the machine alike.
    return benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x},
                           num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time)


def _time_rounds(timed: list, x: torch.Tensor, min_run_time: float, rounds: int, label: str) -> None:
    """Times each (Result, fn) of one case: `rounds` rounds, each visiting every
    variant (starting one further along each round), min_run_time seconds per
    variant split over the rounds; fills median_ms / iqr_ms from the merged runs."""
    import torch.utils.benchmark as benchmark

    runs: dict[int, list] = {i: [] for i in range(len(timed))}
    for r in range(rounds):
        print(f"  {label}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        for k in range(len(timed)):
            i = (r + k) % len(timed)
            res, fn = timed[i]
            if res.status != "ok":
                continue
            try:
                runs[i].append(_measure(fn, x, min_run_time / rounds))
            except Exception as e:
                res.failed(e)
    for i, (res, _) in enumerate(timed):
        if res.status == "ok" and runs[i]:
            merged = benchmark.Measurement.merge(runs[i])[0]
            res.median_ms, res.iqr_ms = merged.median * 1e3, merged.iqr * 1e3


def _case_inputs(name: str, batch: int, dtype: torch.dtype, device: torch.device, args):
    """(model on device in dtype, input x, eager's fp32 output, eager's output in dtype;
    the outputs as output_tensor, float, on CPU) of one case.  Raises Unavailable
    when the model cannot be built here; any other exception is eager's own failure
    (e.g. the seed model at batch 1)."""
    model = _model(name, args.seed)
    gen = torch.Generator().manual_seed(args.seed + batch)
    x32 = torch.randn(batch, zoo.MODELS[name].in_channels, args.size, args.size, generator=gen)
    with torch.inference_mode():
        eager_fp32 = output_tensor(model.to(device)(x32.to(device))).float().cpu()
    model = model.to(device=device, dtype=dtype)
    x = x32.to(device=device, dtype=dtype)
    with torch.inference_mode():
        eager_out = output_tensor(model(x)).float().cpu()
    return model, x, eager_fp32, eager_out


def run(args, on_case=None) -> tuple[dict, list[Result]]:
    """Times every case of args; on_case(env, results so far) after each case (main
    writes results.json then, so a run cut short keeps the cases it finished)."""
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    cases = [(m, b, d) for m in args.models for b in args.batch for d in args.dtype]

    def variants(dtype: torch.dtype) -> list[str]:
        return args.variants or DEFAULT_VARIANTS[device.type]

    results: list[Result] = []
    total = sum(len(variants(DTYPES[d])) for _, _, d in cases)
    done = 0
    for name, batch, dname in cases:
        dtype = DTYPES[dname]
        label = f"{name} batch {batch} {dname}"
        case = [Result(name, batch, dname, variant) for variant in variants(dtype)]
        why_not, eager_failed = None, False
        try:
            model, x, eager_fp32, eager_out = _case_inputs(name, batch, dtype, device, args)
        except Unavailable as e:  # the model cannot be built here (e.g. timm is not installed)
            why_not = str(e)
        except Exception as e:  # eager itself fails (the seed model at batch 1): nothing to check against
            why_not, eager_failed = "eager fails: " + f"{type(e).__name__}: {e}".splitlines()[0], True
        if why_not is not None:  # every variant of the case says why, in one line; the run goes on
            for res in case:
                done += 1
                res.status = "error" if eager_failed and res.variant == "eager" else "unavailable"
                res.notes = [why_not]
                print(f"[{done}/{total}] {label} {res.variant}: {res.status} ({why_not})", file=sys.stderr,
                      flush=True)
            results.extend(case)
            if on_case is not None:
                on_case(_environment(device), results)
            continue
        with torch.inference_mode():
            timed = []
            for res in case:
                done += 1
                why = unavailable_reason(res.variant, device, dtype)
                print(f"[{done}/{total}] {label} {res.variant}: "
                      + (f"unavailable ({why})" if why else "check ..."), file=sys.stderr, flush=True)
                if why is not None:
                    res.status, res.notes = "unavailable", [why]
                    continue
                try:
                    fn = _runner(res.variant, model, device, x, res.notes)
                    out = output_tensor(fn(x)).float().cpu()
                    ok, diff, note = _check(res.variant, out, eager_out, eager_fp32, dtype)
                    res.max_abs_diff = diff
                    if not ok and res.variant.startswith("fused"):
                        res.status, res.notes = "mismatch", [note + ": not timed", *res.notes]
                        continue
                    if not ok:
                        res.notes.append(note)
                    for _ in range(3):  # warm-up
                        fn(x)
                    timed.append((res, fn))
                except Unavailable as e:
                    res.status, res.notes = "unavailable", [str(e)]
                except Exception as e:
                    res.failed(e)
            _time_rounds(timed, x, args.min_run_time, args.rounds, label)
            del timed
        eager_ms = next((r.median_ms for r in case if r.variant == "eager" and r.median_ms), None)
        for res in case:
            if res.median_ms:
                res.images_per_s = batch / res.median_ms * 1e3
                if eager_ms:
                    res.speedup_vs_eager = eager_ms / res.median_ms
        results.extend(case)
        del model
        if on_case is not None:
            on_case(_environment(device), results)
    return _environment(device), results


def _source_commit() -> str | None:
    """The git commit of the mnv3_kernels source that ran ("+dirty" when tracked files
    differ from it), or None when the package is not a git checkout's own (e.g. one
    installed into site-packages)."""
    pkg = os.path.dirname(os.path.abspath(mk.__file__))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", pkg, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(os.path.dirname(pkg)):
            return None
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _environment(device: torch.device) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "device_type": device.type,
        # The host CPU and the vector ISA level of mnv3_kernels' CPU kernels (on a
        # GPU run too: the host side and the CPU-only variants depend on them).
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "mnv3_kernels": mk.__version__,
        "backend_auto": backends.resolve(device).value,
        "source_commit": _source_commit(),
        # Taken after the timings: the 1- and 5-minute averages cover the run (a shared
        # machine's other load moves every number in it).
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for pkg in ("triton", "onnxruntime", "torchvision"):
        try:
            env[pkg] = __import__(pkg).__version__
        except ImportError:
            env[pkg] = None
    return env


def _isa_text(env: dict) -> str:
    isa = env.get("cpu_isa")
    if not isa:
        return "mnv3 CPU kernels: not loaded"
    how = "forced by MNV3_CPU_ISA" if isa["reason"].startswith("forced") else "the best this CPU runs"
    return f"mnv3 CPU ISA {isa['level']} ({isa['lanes']} lanes, {how})"


def _header(env: dict) -> str:
    """The table's first line: when, on what (CPU model and ISA level, or GPU), torch, threads."""
    load = " ".join(f"{v:.2f}" for v in env["loadavg"]) if env["loadavg"] else "-"
    return (f"# {env['date']}  {env['device']} ({env['device_type']}), {_isa_text(env)}, torch {env['torch']}, "
            f"{env['threads']} threads, ops backend {env['backend_auto']}, load average {load}, "
            f"source {env['source_commit'] or 'not a git checkout'}")


def format_table(results: list[Result]) -> str:
    head = f"{'model':20s} {'batch':>5s} {'dtype':5s} {'variant':20s} {'median ms':>10s} {'IQR ms':>8s} " \
           f"{'img/s':>9s} {'vs eager':>8s}  notes"
    lines = [head, "-" * len(head)]
    for r in results:
        if r.median_ms is None:
            lines.append(f"{r.model:20s} {r.batch:5d} {r.dtype:5s} {r.variant:20s} {'-':>10s} {'-':>8s} {'-':>9s} "
                         f"{'-':>8s}  {r.status}: {'; '.join(r.notes)}")
            continue
        speed = f"{r.speedup_vs_eager:7.2f}x" if r.speedup_vs_eager else f"{'-':>8s}"
        lines.append(f"{r.model:20s} {r.batch:5d} {r.dtype:5s} {r.variant:20s} {r.median_ms:10.3f} "
                     f"{r.iqr_ms:8.3f} {r.images_per_s:9.1f} {speed}  {'; '.join(r.notes)}")
    return "\n".join(lines)


def _plot(results: list[Result], path: str, env: dict) -> str | None:
    """speedup.png: per case, a bar per timed variant (the table's order; eager is
    the 1.0 line, its latency under the case's name), each labelled with its
    speedup and its median latency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    timed = [r for r in results if r.speedup_vs_eager]
    cases = list(dict.fromkeys((r.model, r.batch, r.dtype) for r in timed))
    variants = list(dict.fromkeys(r.variant for r in timed if r.variant != "eager"))
    if not cases or not variants:
        return None
    by_key = {(r.model, r.batch, r.dtype, r.variant): r for r in timed}
    fig, ax = plt.subplots(figsize=(max(7, 1.9 * len(cases) * max(1, len(variants)) / 3), 5))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        xs, ys, labels = [], [], []
        for j, c in enumerate(cases):
            r = by_key.get((*c, v))
            if r is not None:
                xs.append(j + i * width)
                ys.append(r.speedup_vs_eager)
                labels.append(f"{r.speedup_vs_eager:.1f}x\n{r.median_ms:.3g} ms")
        bars = ax.bar(xs, ys, width, label=v)
        ax.bar_label(bars, labels=labels, fontsize=6, padding=1)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    eager_ms = {c: by_key[(*c, "eager")].median_ms for c in cases if (*c, "eager") in by_key}
    ax.set_xticklabels([f"{m} b{b} {d}\neager {eager_ms[(m, b, d)]:.3g} ms" if (m, b, d) in eager_ms
                        else f"{m} b{b} {d}" for m, b, d in cases], fontsize=8)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_ylabel("speedup vs eager (higher is better)")
    ax.set_ylim(0, max(r.speedup_vs_eager for r in timed) * 1.25)
    ax.set_title(f"mnv3_kernels bench, {env['date'][:16].replace('T', ' ')} UTC: {env['device']}\n{_isa_text(env)}, "
                 f"torch {env['torch']}, {env['threads']} threads", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write_results(args, env: dict, results: list[Result]) -> None:
    """results.json in args.out, replaced whole (written beside, then renamed): a
    reader, or a run killed mid-write, never sees half a file."""
    path = os.path.join(args.out, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"environment": env, "args": vars(args), "results": [asdict(r) for r in results]}, f, indent=2)
    os.replace(path + ".tmp", path)


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, [*VARIANTS, *zoo.MODELS]))
    models = "\n".join(f"  {name:{width}s}  {m.description}" for name, m in zoo.MODELS.items())
    variants = "\n".join(f"  {name:{width}s}  {what}" for name, what in VARIANTS.items())
    epilog = (f"models (--models; default: {' '.join(zoo.DEFAULT_MODELS)}; random weights, nothing downloaded):\n"
              f"{models}\n\nvariants (--variants; default: "
              + "; ".join(f"{d}: {' '.join(v)}" for d, v in DEFAULT_VARIANTS.items()) + f"):\n{variants}\n\n"
              "A model or variant that cannot run here (not installed, not built, not on this device or dtype, "
              "eager itself failing) is listed in the table with the reason.")
    p = argparse.ArgumentParser(prog="python -m mnv3_kernels.bench", description=__doc__, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu; here %(default)s)")
    p.add_argument("--models", nargs="+", choices=list(zoo.MODELS), default=list(zoo.DEFAULT_MODELS),
                   metavar="MODEL", help="models by name, in the table's order as given (default: "
                   f"{' '.join(zoo.DEFAULT_MODELS)}; listed below)")
    p.add_argument("--batch", nargs="+", type=int, help="batch sizes (default: 1 8 on CPU; 1 8 64 256 on CUDA)")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES),
                   help="default: fp32 on CPU; fp32 fp16 bf16 on CUDA")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), metavar="VARIANT",
                   help="only these variants, in the table's order as given (listed below)")
    p.add_argument("--size", type=int, default=224, help="input height and width (default: %(default)s)")
    p.add_argument("--min-run-time", type=float, default=2.0,
                   help="seconds of timing per variant and case, split over the rounds (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds of timing, each visiting every variant of a case in turn (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0, torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default: %(default)s)")
    p.add_argument("--out", help="folder for results.json and speedup.png (default: a new folder per run under "
                                 "mnv3_bench_results/, named by date, device and dtypes)")
    p.add_argument("--force", action="store_true", help="overwrite the results an earlier run left in --out")
    return p


def _check_args(p: argparse.ArgumentParser, args) -> None:
    """Refuses what cannot run, in one line each, before any work."""
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        p.error(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device {args.device}: the bench runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA GPU is visible here (torch.cuda.is_available() is False; "
                f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        p.error(f"--device {args.device}: this machine has {torch.cuda.device_count()} GPU(s)")
    for name, value, least in (("--rounds", args.rounds, 1), ("--size", args.size, 32), ("--threads", args.threads, 0)):
        if value < least:
            p.error(f"{name} must be at least {least}, got {value}")
    if args.batch and min(args.batch) < 1:
        p.error(f"--batch sizes must be at least 1, got {min(args.batch)}")
    if args.min_run_time <= 0:
        p.error(f"--min-run-time must be positive, got {args.min_run_time}")
    if args.out is not None and os.path.exists(os.path.join(args.out, "results.json")) and not args.force:
        p.error(f"--out {args.out} holds the results of an earlier run: pass --force to overwrite them, or "
                "name another folder (without --out each run gets its own)")


def main(argv: list[str] | None = None) -> None:
    p = _parser()
    args = p.parse_args(argv)
    _check_args(p, args)
    on_cuda = torch.device(args.device).type == "cuda"
    if not on_cuda:
        # torch.utils.cpp_extension (imported by torch.utils.benchmark and torch.compile)
        # warns "No CUDA runtime is found, using CUDA_HOME=..." on a machine with the CUDA
        # toolkit but no GPU: expected on a CPU run, not a misconfiguration.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    args.batch = args.batch or ([1, 8, 64, 256] if on_cuda else [1, 8])
    args.dtype = args.dtype or (["fp32", "fp16", "bf16"] if on_cuda else ["fp32"])
    if args.out is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
        args.out = os.path.join("mnv3_bench_results", f"{stamp}-{args.device.replace(':', '')}-{'-'.join(args.dtype)}")
    os.makedirs(args.out, exist_ok=True)
    env, results = run(args, on_case=lambda env, results: _write_results(args, env, results))
    print(_header(env))
    print(format_table(results))
    _write_results(args, env, results)
    plot = _plot(results, os.path.join(args.out, "speedup.png"), env)
    if plot is None:
        import importlib.util

        if os.path.exists(os.path.join(args.out, "speedup.png")):  # an earlier run's (--force): not this one's
            os.remove(os.path.join(args.out, "speedup.png"))

        why = ("matplotlib is not installed" if importlib.util.find_spec("matplotlib") is None
               else "no variant beside eager was timed")
    print(f"# wrote {os.path.join(args.out, 'results.json')}" + (f" and {plot}" if plot else f" (no plot: {why})"))


if __name__ == "__main__":
    main()
