"""freeze(): a model -> its inference compiled once into plan segments: fp32 on
the CPU (FrozenModel), or on a GPU in the model's dtype, replayed as CUDA graphs
(FrozenCudaModel).

The plan compiler (plan/compiler.py) lowers what it can of the model's
forward (convs with their BatchNorm and activation, squeeze-excitation,
pooling, the classifier) into mnv3 op steps, each run of them one
mnv3::run_plan call on weights folded and packed now; what it cannot lower
runs as the model's own code between those calls.  Like torch.jit.freeze,
inductor's freezing or an ONNX Runtime session, the result is fixed: it works
on a copy of the model, so later changes to the model do not reach it (freeze
again), and it skips the per-forward check for changed weights the live fused
MobileNetV3 makes (it reads the version and data pointer of all ~270 parameters
and buffers: ~0.2-0.3 ms of a ~3.5 ms Large forward on 2 cores).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.utils._pytree import tree_map

from . import backends
from .plan.arena import in_one_buffer
from .plan.compiler import Plan, compile_model


class FrozenModel(nn.Module):
    """A frozen model (made by mnv3_kernels.freeze): float32 CPU inference only.

    forward(x): x a float32 CPU tensor [N, C, H, W] (any layout) -> what the model
    returns (logits, a dict of maps, ...).  The plan's segments hold the weights as
    constants; parts the plan does not cover run as copies of the model's modules
    (frozen too: no gradients).  It cannot be put in train mode, moved to another
    device or dtype, or run under autocast (each raises); outside inference_mode
    the outputs are ordinary tensors.
    """

    def __init__(self, plan: Plan, in_channels: int, source: str):
        super().__init__()
        self.graph = plan.graph_module
        self.graph.requires_grad_(False)
        self.in_channels, self.source = in_channels, source
        self.left_alone = plan.left_alone
        self._plan = plan
        single = plan.single_call()
        # The whole forward in one op call (the usual case for a classifier): no graph module call.
        self._direct = None if single is None else (single.tensors, single.program)
        self._run_plan = torch.ops.mnv3.run_plan.default
        super().train(False)

    def _check_input(self, x, ok, wanted: str) -> str:
        """Raises for an x forward cannot take: not a tensor, not `ok(x)` (named as
        `wanted`), not [N, in_channels, H, W], requiring grad.  Returns the class name."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
        if not ok(x) or x.dim() != 4 or x.size(1) != self.in_channels:
            raise ValueError(f"{name}: x must be a {wanted} tensor [N, {self.in_channels}, H, W]; "
                             f"got {x.dtype} on {x.device} with shape {list(x.shape)}")
        if x.requires_grad:
            raise RuntimeError(f"{name}: x requires grad, but a frozen model has no backward; "
                               "take gradients through the unfrozen model")
        return name

    def forward(self, x: torch.Tensor):
        name = self._check_input(x, lambda t: t.device.type == "cpu" and t.dtype == torch.float32, "float32 CPU")
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError(f"{name} runs in float32; call it outside torch.autocast('cpu'), "
                               "or run the unfrozen model under autocast")
        if not backends.native_on_cpu():
            raise RuntimeError(f"{name} runs the native CPU kernels, but another backend is selected "
                               f"for CPU ({backends.ENV_VAR} or mnv3_kernels.use_backend); use the unfrozen model")
        if torch.is_inference_mode_enabled():
            return self._run(x)
        with torch.inference_mode():  # no autograd dispatch for the ops; ordinary tensors out
            out = self._run(x)
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)

    def _run(self, x: torch.Tensor):
        if self._direct is not None:
            return self._run_plan([x], *self._direct)[0]
        return self.graph(x)

    def describe(self) -> str:
        """The plan: its segments' steps and what runs as the model's own code, and why."""
        return self._plan.describe()

    def train(self, mode: bool = True) -> FrozenModel:
        if mode:
            raise RuntimeError(f"{type(self).__name__} is inference-only and cannot be put in train mode; "
                               "train the unfrozen model and freeze it again")
        return super().train(False)

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .half() / .float() ...: the packed weights are float32 CPU constants.
        raise RuntimeError(f"{type(self).__name__} holds float32 CPU weights packed for its kernels and cannot "
                           "be converted or moved; convert the unfrozen model and freeze it again")

    def extra_repr(self) -> str:
        tensors = [t for seg in self._plan.segments for t in seg.tensors]
        mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
        return (f"source={self.source}, segments={len(self._plan.segments)}, "
                f"left_alone={len(self.left_alone)}, plan weights={mb:.1f} MB")


FrozenMobileNetV3 = FrozenModel  # its name before freeze() took any model


def cuda_plan(model: nn.Module) -> Plan:
    """model (on its device, in its dtype) compiled for the CUDA kernels (plan.compiler.CUDA):
    BatchNorm folded on an fp32 copy, then the plan's weights and the parts it leaves to the
    model's code converted back to model's dtype.  Its segments run on mnv3's CUDA kernels
    for CUDA inputs (plan.compiler.Target.execute), else on the reference ops."""
    from .plan.compiler import CUDA

    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        plan = compile_model(copy.deepcopy(model).float(), CUDA)
    for seg in plan.segments:
        seg.tensors = [t.to(dtype) for t in seg.tensors]
    plan.graph_module.to(dtype)
    return plan


class FrozenCudaModel(FrozenModel):
    """A frozen model on CUDA (made by mnv3_kernels.freeze from a model on a GPU): the
    plan compiled for the CUDA kernels in the model's dtype (float32, float16 or
    bfloat16), each input shape's forward captured once into a CUDA graph and replayed.

    forward(x): x a CUDA tensor of the model's dtype on its device, [N, C, H, W] in any
    layout -> what the model returns, a fresh copy each call (the graph's own output
    buffers are overwritten by its next replay).  The first call of a shape warms up and
    captures (hundreds of ms); a forward that cannot be captured (a part left to the
    model's code that syncs with the host) runs without a graph for that shape, with a
    warning.  Refuses what FrozenModel refuses.
    """

    WARMUP_RUNS = 3  # before capture: lazy initialisation, cuDNN / cuBLAS handles, allocator

    def __init__(self, plan: Plan, in_channels: int, source: str, device: torch.device, dtype: torch.dtype):
        super().__init__(plan, in_channels, source)
        self.device, self.dtype = device, dtype
        self._graphs: dict = {}  # x.shape -> (graph, static input, static output), or None: no graph

    def forward(self, x: torch.Tensor):
        name = self._check_input(x, lambda t: t.device == self.device and t.dtype == self.dtype,
                                 f"{self.dtype} {self.device}")
        if torch.is_autocast_enabled("cuda"):
            raise RuntimeError(f"{name} runs in {self.dtype}; call it outside torch.autocast('cuda'), "
                               "or run the unfrozen model under autocast")
        if backends.resolve("cuda") is not backends.Backend.NATIVE:
            raise RuntimeError(f"{name} runs the native CUDA kernels, but another backend is selected for CUDA "
                               f"({backends.ENV_VAR} or mnv3_kernels.use_backend); use the unfrozen model")
        with torch.inference_mode():
            key = tuple(x.shape)
            if key not in self._graphs:
                self._graphs[key] = self._capture(x)
            captured = self._graphs[key]
            if captured is None:
                out = self.graph(x)
            else:
                graph, static_x, static_out = captured
                static_x.copy_(x)
                graph.replay()
                out = static_out
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)

    def _capture(self, x: torch.Tensor):
        """(graph, static input, static output) of the forward on x's shape, or None (with a
        warning) when it cannot be captured."""
        static_x = x.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(self.WARMUP_RUNS):
                self.graph(static_x)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_out = self.graph(static_x)
        except RuntimeError as e:
            warnings.warn(f"{type(self).__name__}: the forward on {list(x.shape)} cannot be captured in a CUDA graph "
                          f"({str(e).splitlines()[0]}); it runs without one", RuntimeWarning, stacklevel=3)
            return None
        return graph, static_x, static_out

    def _apply(self, fn, recurse=True):
        raise RuntimeError(f"{type(self).__name__} holds weights folded for its kernels in {self.dtype} on "
                           f"{self.device} and cannot be converted or moved; convert the unfrozen model and "
                           "freeze it again")


def freeze(model: nn.Module) -> FrozenModel:
    """Returns a FrozenModel: `model`'s float32 CPU inference as plan segments (mnv3::run_plan
    calls on weights folded and packed now) with the parts the plan does not cover as copies
    of the model's code.  Later changes to `model` do not reach it.

    model: what mnv3_kernels.fuse accepts, fused or not (torchvision's and timm's
    MobileNet-family models, segmentation models on them, hand-written ones), in eval()
    mode, with float32 CPU parameters; or all of its parameters on one GPU in float32,
    float16 or bfloat16: then a FrozenCudaModel (the plan on the CUDA kernels, replayed
    as a CUDA graph per input shape).  model itself is not changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze(model): model must be a torch.nn.Module, got {type(model).__name__}")
    source = f"{type(model).__module__}.{type(model).__qualname__}"
    if any(m.training for m in model.modules()):
        raise ValueError("freeze(model): call model.eval() first (BatchNorm folds its running statistics only "
                         "in eval mode)")
    floats = [(name, t) for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_floating_point()]
    if floats and floats[0][1].device.type == "cuda":
        return _freeze_cuda(model, floats, source)
    for name, t in floats:
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise ValueError(f"freeze(model): the frozen model runs the float32 CPU kernels (or the CUDA kernels "
                             f"for a model on a GPU); model's {name} is {t.dtype} on {t.device} (freeze a float32 "
                             "CPU copy)")
    native, why_not = backends.native_availability("cpu")
    if not native:
        raise RuntimeError(f"freeze(model): {why_not}")
    conv = _first_conv(model)
    model = copy.deepcopy(model)  # the frozen model shares nothing with the caller's
    with torch.no_grad():
        plan = _compiled(lambda: compile_model(model), source)
        # Copies (a folded tensor may still be one of the model's own), all segments' in one
        # buffer on huge pages (plan/arena.py; not the live plan's: faulting in huge pages
        # measured 30-60 ms for Large's 22 MB, which its rebuild after each weight change would pay).
        copies = iter(in_one_buffer([t for seg in plan.segments for t in seg.tensors]))
        for seg in plan.segments:
            seg.tensors = [next(copies) for _ in seg.tensors]
    return FrozenModel(plan, conv.in_channels, source)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError("freeze(model): model has no Conv2d: freeze() compiles image models")
    return conv


def _compiled(compile_fn, source: str) -> Plan:
    """compile_fn()'s plan, or a ValueError naming source when nothing of it lowers."""
    try:
        plan = compile_fn()
    except Exception as e:  # torch.fx cannot trace the forward at all
        raise ValueError(f"freeze(model): cannot compile {source}: {type(e).__name__}: {e}") from e
    if not plan.segments:
        reasons = "; ".join(f"{p.where}: {p.why}" for p in plan.left_alone[:5])
        raise ValueError(f"freeze(model): no part of {source} lowers to the plan's steps ({reasons}); "
                         "run the model itself, or mnv3_kernels.fuse(model)")
    return plan


def _freeze_cuda(model: nn.Module, floats: list, source: str) -> FrozenCudaModel:
    device, dtype = floats[0][1].device, floats[0][1].dtype
    for name, t in floats:
        if t.device != device or t.dtype != dtype or dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"freeze(model): a model on a GPU freezes with all its parameters and buffers on one "
                             f"device in one dtype (float32, float16 or bfloat16); {floats[0][0]} is "
                             f"{dtype} on {device}, {name} is {t.dtype} on {t.device}")
    native, why_not = backends.native_availability("cuda")
    if not native:
        raise RuntimeError(f"freeze(model): {why_not}")
    conv = _first_conv(model)
    plan = _compiled(lambda: cuda_plan(model), source)  # cuda_plan compiles a copy
    return FrozenCudaModel(plan, conv.in_channels, source, device, dtype)
