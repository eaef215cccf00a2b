"""fuse() for any model: finds depthwise conv -> BatchNorm -> activation and
squeeze-excitation blocks in the model's torch.fx graph and replaces them with
modules that run the mnv3 ops.

Matched (after torch.fx.symbolic_trace, module boundaries inlined):
  * depthwise nn.Conv2d (groups == in == out channels > 1, zero padding) ->
    nn.BatchNorm2d (eval, running stats) -> ReLU / ReLU6 / Hardswish / nothing,
    the activation as a module, a function (F.relu, torch.relu, F.relu6,
    F.hardswish) or a method (x.relu()); timm's BatchNormAct2d counts as
    BatchNorm + its own activation.
  * squeeze-excitation: global average pool of x (nn.AdaptiveAvgPool2d(1),
    F.adaptive_avg_pool2d(x, 1), x.mean((2, 3))) -> 1x1 nn.Conv2d (groups 1)
    -> [BatchNorm2d] -> ReLU -> 1x1 conv -> [BatchNorm2d] -> Hardsigmoid or
    Sigmoid -> multiplied with x; or the same with nn.Linear FCs and
    BatchNorm1d, a flatten / view / reshape / squeeze (or a mean without
    keepdim) before the first FC and a view / reshape / unsqueeze / expand_as /
    [..., None, None] after the gate.  These reshapes are taken to be the
    natural [N, C, 1, 1] <-> [N, C] ones (their arguments are not checked).
    BatchNorm after an FC (a per-channel affine in eval) is folded into it.
  * Activation modules that are not torch.nn classes (timm's HardSigmoid, a
    hand-written h_swish) are identified numerically: a parameterless module
    whose output equals ReLU, ReLU6, Hardswish, Hardsigmoid or Sigmoid on
    [-10, 10] within the op tolerance (tolerances.OP_FP32) counts as it.

Everything else is left alone and listed with the reason in a FuseReport.
A model (or submodule) that torch.fx cannot trace (data-dependent control
flow, ...) is searched one module level down, recursively; the parts left
untraced are reported too.

Where the fused module goes: when the pattern's modules are all of one
module's children (torchvision's Conv2dNormActivation, timm's SqueezeExcite,
the seed's SqueezeExcitation), the fused module replaces that module and keeps
the children's names, so state_dict keys do not change; otherwise it replaces
the conv (or first FC) and holds the parts as conv / bn / act (fc1 / bn1 / act
/ fc2 / bn2 / gate), so e.g. timm's 'blocks.1.0.bn2.weight' becomes
'blocks.1.0.conv_dw.bn.weight'.

The fused modules hold the original conv / BatchNorm / FC modules as
submodules (parameters shared), fold BatchNorm once and cache it, and in
train() mode or in eval() with autograd on run the original modules
(fused_layers.FusedModule, the family the drop-in model's layers belong to).
"""

from __future__ import annotations

import operator
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import activations, functional, ops
from .activations import activation_name, gate_name
from .models.fused_layers import FoldedConv, FoldedSE, FusedModule, fused_active, tap_major
from .reference import ACTIVATION_FNS, GATE_FNS, fold_batchnorm
from .tolerances import OP_FP32

DWCONV, SE, TRACE = "dwconv", "se", "trace"
_KIND_NAMES = {DWCONV: "depthwise conv + BatchNorm + activation", SE: "squeeze-excitation"}
_DW_ACTIVATIONS = activations.listed(ops.ACTIVATIONS)  # "(ReLU, ReLU6, Hardswish, identity)"
_SE_GATES = activations.listed(ops.GATES)


# --------------------------------------------------------------------------- report
class Fused(NamedTuple):
    kind: str  # "dwconv" or "se"
    where: str  # path of the fused module in the returned model
    replaced: tuple[str, ...]  # the original modules (paths) and functions it runs
    detail: str


class Skipped(NamedTuple):
    kind: str  # "dwconv", "se" or "trace" (a module torch.fx could not trace)
    where: str
    why: str


@dataclass
class FuseReport:
    """What fuse() fused and what it left alone, and why.  print() it for a table."""

    model: str  # class name of the model given to fuse()
    method: str  # "torch.fx" or "drop-in mnv3_kernels.MobileNetV3"
    fused: list[Fused] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def count(self, kind: str) -> int:
        """Number of fused blocks of a kind ("dwconv" or "se")."""
        if kind not in _KIND_NAMES:
            raise ValueError(f"kind must be one of {tuple(_KIND_NAMES)}, got {kind!r}")
        return sum(f.kind == kind for f in self.fused)

    def __str__(self) -> str:
        counts = ", ".join(f"{self.count(k)} {name}" for k, name in _KIND_NAMES.items())
        head = f"mnv3_kernels.fuse({self.model}) via {self.method}: fused {counts}; left alone {len(self.skipped)}"
        if not self.fused:
            head += " -- nothing was fused"
        rows = [("fused", f.kind, f.where, f"{' + '.join(_relative(r, f.where) for r in f.replaced)}: {f.detail}")
                for f in self.fused]
        rows += [("skipped", s.kind, s.where, s.why) for s in self.skipped]
        if not rows:
            return head
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
        return "\n".join([head, *lines])


def _relative(path: str, where: str) -> str:
    return path[len(where) + 1:] if path.startswith(where + ".") else path


def dw_detail(conv: nn.Conv2d, activation: str) -> str:
    k, s = conv.kernel_size, conv.stride
    return f"{k[0]}x{k[1]} stride {s[0] if s[0] == s[1] else s}, {activation}"


# --------------------------------------------------------------------------- fused modules
def _fold_into(layer: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a conv or Linear with the eval BatchNorm after it folded in."""
    w = layer.weight.detach()
    b = None if layer.bias is None else layer.bias.detach()
    if bn is None:
        return w, (w.new_zeros(w.shape[0]) if b is None else b)
    return fold_batchnorm(w, b, None if bn.weight is None else bn.weight.detach(),
                          None if bn.bias is None else bn.bias.detach(), bn.running_mean, bn.running_var, bn.eps)


_ATTRIBUTES = {"where", "with_mean", "act_op", "padding_pair", "gate_op", "linear_fcs", "part"}  # of the fused modules


class _RoleModule(FusedModule, nn.Module):
    """Holds the original modules under their original child names (so state_dict keys stay)
    and looks them up by role."""

    def __init__(self, parts: dict[str, nn.Module | None], names: dict[str, str], where: str) -> None:
        super().__init__()
        self._roles: dict[str, str] = {}
        for role, module in parts.items():
            if module is not None:
                self._roles[role] = names.get(role, role)
                self.add_module(self._roles[role], module)
        self.where = where

    def part(self, role: str) -> nn.Module | None:
        name = self._roles.get(role)
        return None if name is None else self._modules[name]


class FusedDWConvBNAct(_RoleModule):
    """Depthwise conv -> BatchNorm -> activation as one mnv3::dwconv_bias_act call (eval only).

    with_mean=True makes forward return (y, mean), mean the fp32 [N, C] spatial
    mean of y (the SE squeeze of the block after it)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.Module, act: nn.Module, activation: str, padding: tuple[int, int],
                 names: dict[str, str], where: str) -> None:
        super().__init__({"conv": conv, "bn": bn, "act": act}, names, where)
        if activation not in ops.ACTIVATIONS:
            raise ValueError(f"activation must be one of {ops.ACTIVATIONS}, got {activation!r}")
        self.act_op = activation
        self.padding_pair = padding
        self.with_mean = False

    def extra_repr(self) -> str:
        return f"act_op={self.act_op!r}, with_mean={self.with_mean}"

    def _fold(self) -> FoldedConv:
        conv = self.part("conv")
        w, b = _fold_into(conv, self.part("bn"))
        if w.device.type == "cpu" and w.dtype == torch.float32:
            w = tap_major(w)
        return FoldedConv(w, b, tuple(conv.stride), self.padding_pair, tuple(conv.dilation), conv.groups,
                          self.act_op, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.dtype in ops.SUPPORTED_DTYPES and fused_active(self, x):
            f = self.folded()
            return functional.dwconv_bias_act(x, f.weight, f.bias, f.stride, f.padding, f.dilation, f.activation,
                                       with_mean=self.with_mean)
        return self.forward_native(x)

    def forward_native(self, x: torch.Tensor):
        """The original modules' math (what the plan compiler traces)."""
        y = self.part("act")(self.part("bn")(self.part("conv")(x)))
        return (y, y.mean(dim=(2, 3), dtype=torch.float32)) if self.with_mean else y


class FusedSqueezeExcite(_RoleModule):
    """x * gate(fc2(relu(fc1(mean(x))))) (BatchNorm after an FC folded in) as one
    mnv3::se_excite_scale call (eval only); forward(x, pooled) takes the squeeze
    from the depthwise block before it when given."""

    def __init__(self, parts: dict[str, nn.Module | None], gate: str, linear: bool, names: dict[str, str],
                 where: str) -> None:
        super().__init__(parts, names, where)
        if gate not in ops.GATES:
            raise ValueError(f"gate must be one of {ops.GATES}, got {gate!r}")
        self.gate_op = gate
        self.linear_fcs = linear

    def extra_repr(self) -> str:
        return f"gate_op={self.gate_op!r}, linear_fcs={self.linear_fcs}"

    def _fold(self) -> FoldedSE:
        w1, b1 = _fold_into(self.part("fc1"), self.part("bn1"))
        w2, b2 = _fold_into(self.part("fc2"), self.part("bn2"))
        return FoldedSE(w1.flatten(1), b1, w2.flatten(1), b2, self.gate_op)

    def _unfused(self, x: torch.Tensor) -> torch.Tensor:
        pool = self.part("pool")
        s = x.mean((2, 3), keepdim=not self.linear_fcs) if pool is None else pool(x)
        if self.linear_fcs and pool is not None:
            s = s.flatten(1)
        for role in ("fc1", "bn1", "act", "fc2", "bn2", "gate"):
            module = self.part(role)
            s = s if module is None else module(s)
        return x * (s[:, :, None, None] if self.linear_fcs else s)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype in ops.SUPPORTED_DTYPES and fused_active(self, x):
            f = self.folded()
            if pooled is None:
                pooled = x.mean(dim=(2, 3), dtype=torch.float32)
            return functional.se_excite_scale(x, pooled, f.w1, f.b1, f.w2, f.b2, f.gate)
        return self._unfused(x)

    def forward_native(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """The original modules' math (what the plan compiler traces; pooled is x's squeeze)."""
        return self._unfused(x)


# --------------------------------------------------------------------------- graph patterns
_SHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "expand", "expand_as"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_MULS = {operator.mul, torch.mul}


def _timm_norm_act() -> tuple[type, ...]:
    """timm's BatchNormAct2d (BatchNorm2d + .drop + .act in one module), if timm is in use."""
    if "timm" not in sys.modules:
        return ()
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:
        return ()
    return (BatchNormAct2d,)


def _identify_elementwise(module: nn.Module) -> str | None:
    """The op activation/gate (not identity) a parameterless module computes, checked on
    [-10, 10] within OP_FP32, else None."""
    probe = torch.linspace(-10.0, 10.0, 2001).reshape(1, 3, 23, 29)
    try:
        with torch.no_grad():
            out = module.forward(probe.clone())
    except Exception:  # not an elementwise function of a 4-d tensor
        return None
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape or out.dtype != probe.dtype:
        return None
    for name, fn in (*ACTIVATION_FNS.items(), *GATE_FNS.items()):
        if name != "identity" and torch.allclose(out, fn(probe), **OP_FP32):
            return name
    return None


def _is_activation_class(cls: type) -> bool:
    return cls.__module__ == "torch.nn.modules.activation" or cls.__module__.startswith("timm.layers.activations")


def _common_prefix(paths: list[list[str]]) -> list[str]:
    common = paths[0] if paths else []
    for p in paths[1:]:
        common = common[:next((i for i, (a, b) in enumerate(zip(common, p)) if a != b), min(len(common), len(p)))]
    return common


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:120]}" if text else type(e).__name__


class _Context:
    """State of one fuse() call: the report and the modules identified before tracing."""

    def __init__(self, model: nn.Module, report: FuseReport) -> None:
        self.report = report
        self.norm_act = _timm_norm_act()
        self.elementwise: dict[int, str] = {}  # id(module) -> op name, for non-torch.nn activations
        self.own: set[int] = set()  # mnv3_kernels' fused modules: they run the ops already
        for m in model.modules():
            cls = type(m)
            if hasattr(m, "forward_native"):
                self.own.add(id(m))
            elif (not cls.__module__.startswith("torch.") and not m._modules
                  and next(m.parameters(recurse=False), None) is None and next(m.buffers(recurse=False), None) is None):
                name = _identify_elementwise(m)
                if name is not None:
                    self.elementwise[id(m)] = name

    def op_name(self, m: nn.Module) -> str | None:
        """The op activation or gate name of a module, None if it is neither."""
        return activation_name(m) or gate_name(m) or self.elementwise.get(id(m))


class _Tracer(fx.Tracer):
    """symbolic_trace with timm's BatchNormAct2d, numerically identified activations and
    mnv3_kernels' modules as leaves; a submodule that fails to trace becomes a leaf
    (recorded in .untraced) instead of failing the whole trace."""

    def __init__(self, ctx: _Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.forced: set[int] = set()
        self.untraced: dict[str, str] = {}  # path -> why

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (id(m) in self.forced or id(m) in self.ctx.own or id(m) in self.ctx.elementwise
                or isinstance(m, self.ctx.norm_act) or super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        path = self.path_of_module(m)
        if self.is_leaf_module(m, path):
            return super().call_module(m, forward, args, kwargs)
        n_nodes, stack = len(self.graph.nodes), self.module_stack.copy()
        calls = dict(getattr(self, "num_calls", {}))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:  # data-dependent control flow and the like: trace it as one call
            for node in reversed(list(self.graph.nodes)[n_nodes:]):
                self.graph.erase_node(node)
            self.module_stack.clear()
            self.module_stack.update(stack)
            if hasattr(self, "num_calls"):
                self.num_calls = calls
            self.untraced = {p: r for p, r in self.untraced.items() if not p.startswith(path + ".")}
            self.untraced[path] = _short(e)
            self.forced.add(id(m))
            return super().call_module(m, forward, args, kwargs)


@dataclass
class _Match:
    kind: str
    nodes: list[fx.Node]  # pattern nodes in graph order; the last one's value is replaced
    parts: dict[str, tuple[str, nn.Module]]  # role -> (path, original module)
    made: dict[str, nn.Module]  # role -> module made for a functional activation/gate
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


class _Skip(Exception):
    pass


class GraphQueries:
    """Questions about the nodes of a traced GraphModule (self.gm) shared by the fuse()
    rewriter here and the plan compiler (plan/compiler.py)."""

    def module(self, node: Any) -> nn.Module | None:
        return self.gm.get_submodule(node.target) if isinstance(node, fx.Node) and node.op == "call_module" else None

    def single_user(self, node: fx.Node) -> fx.Node | None:
        return next(iter(node.users)) if len(node.users) == 1 else None

    def global_pool(self, node: fx.Node) -> tuple[fx.Node, bool] | None:
        """(input, keepdim) if node is a global average pool of a 4-d input."""
        if not node.args or not isinstance(node.args[0], fx.Node):
            return None
        m = self.module(node)
        if m is not None:
            ok = type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1)) and len(node.args) == 1
            return (node.args[0], True) if ok and not node.kwargs else None
        if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            return (node.args[0], True) if size in (1, (1, 1), [1, 1]) else None
        if (node.op == "call_method" and node.target == "mean") or (node.op == "call_function"
                                                                     and node.target is torch.mean):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
            if (isinstance(dims, (tuple, list)) and all(isinstance(d, int) for d in dims)
                    and sorted(d % 4 for d in dims) == [2, 3] and "dtype" not in node.kwargs):
                return node.args[0], bool(keepdim)
        return None

    def is_shape(self, node: fx.Node, prev: fx.Node) -> bool:
        if not node.args or node.args[0] is not prev:
            return False
        if node.op == "call_method":
            return node.target in _SHAPE_METHODS
        if node.op == "call_function" and node.target is operator.getitem:  # s[:, :, None, None]
            index = node.args[1]
            return isinstance(index, tuple) and all(i is None or i == slice(None) for i in index)
        if node.op == "call_function":
            return node.target in _SHAPE_FUNCTIONS
        return type(self.module(node)) is nn.Flatten

    def se_chain(self, pool: fx.Node, x: fx.Node) -> tuple[list[fx.Node], fx.Node] | None:
        """The single-user chain from the pool to a multiply with the pool's input, if any."""
        chain, cur = [], pool
        for _ in range(16):
            nxt = self.single_user(cur)
            if nxt is None:
                return None
            is_mul = (nxt.op == "call_function" and nxt.target in _MULS) or (nxt.op == "call_method"
                                                                                 and nxt.target == "mul")
            if is_mul and len(nxt.args) == 2 and not nxt.kwargs and set(nxt.args) == {x, cur}:
                return chain, nxt
            chain.append(nxt)
            cur = nxt
        return None


class _Rewriter(GraphQueries):
    """Finds and replaces the patterns in one traced GraphModule."""

    def __init__(self, gm: fx.GraphModule, prefix: str, ctx: _Context) -> None:
        self.gm, self.graph, self.prefix, self.ctx = gm, gm.graph, prefix, ctx
        self.calls = Counter(n.target for n in self.graph.nodes if n.op == "call_module")
        self.changed = 0
        self.erased: set[fx.Node] = set()
        self.moved: set[str] = set()  # old paths of modules now held by fused modules

    # -- helpers
    def describe(self, node: fx.Node) -> str:
        m = self.module(node)
        if m is not None:
            return f"{type(m).__name__} '{_join(self.prefix, node.target)}'"
        if node.op == "call_method":
            return f".{node.target}()"
        return getattr(node.target, "__name__", str(node.target))

    def activation(self, node: fx.Node, prev: fx.Node) -> tuple[str | None, str] | None:
        """(op name, or None if not one of ours; description) when node is an activation of prev."""
        if not node.args or node.args[0] is not prev or any(isinstance(a, fx.Node) for a in node.args[1:]):
            return None
        m = self.module(node)
        if m is not None:
            name = self.ctx.op_name(m)
            return (name, type(m).__name__) if name is not None or _is_activation_class(type(m)) else None
        if node.op == "call_function":
            fname = getattr(node.target, "__name__", "")
            if node.target in activations.FUNCTIONS:
                return activations.FUNCTIONS[node.target], fname
            return (None, fname) if fname.rstrip("_") in activations.OTHER else None
        if node.op == "call_method":
            if node.target in activations.METHODS:
                return activations.METHODS[node.target], f".{node.target}()"
            return (None, f".{node.target}()") if node.target.rstrip("_") in activations.OTHER else None
        return None

    def bn_problem(self, bn: nn.Module, node: fx.Node, prev: fx.Node, linear: bool = False) -> str | None:
        allowed = (nn.BatchNorm1d,) if linear else (nn.BatchNorm2d, *self.ctx.norm_act)
        if type(bn) not in allowed:
            return f"{type(bn).__name__} is not {'BatchNorm1d' if linear else 'BatchNorm2d'}"
        if node.args != (prev,) or node.kwargs:
            return "BatchNorm called with extra arguments"
        if bn.training:
            return "BatchNorm in training mode (call model.eval() before fuse())"
        if bn.running_mean is None or bn.running_var is None:
            return "BatchNorm without running statistics (track_running_stats=False)"
        drop = getattr(bn, "drop", None) if isinstance(bn, self.ctx.norm_act) else None
        if drop is not None and type(drop) not in (nn.Identity, nn.Dropout):
            return f"{type(bn).__name__}.drop is {type(drop).__name__}"
        if self.calls[node.target] > 1:
            return f"BatchNorm '{_join(self.prefix, node.target)}' is called {self.calls[node.target]} times"
        return None

    def where(self, nodes: list[fx.Node]) -> str:
        """The innermost module whose forward holds all of nodes."""
        paths = [n.target.split(".") if n.op == "call_module" else
                 list(n.meta["nn_module_stack"].values())[-1][0].split(".")
                 for n in nodes if n.op == "call_module" or n.meta.get("nn_module_stack")]
        return _join(self.prefix, ".".join(_common_prefix(paths))) or "<model>"

    # -- depthwise conv -> BatchNorm -> activation
    def match_dw(self, conv_node: fx.Node) -> _Match:
        conv = self.module(conv_node)
        if type(conv) is not nn.Conv2d:
            raise _Skip(f"{type(conv).__name__} is a subclass of nn.Conv2d with its own forward")
        g, cin, cout = conv.groups, conv.in_channels, conv.out_channels
        if not g == cin == cout:
            raise _Skip(f"conv not depthwise (groups={g}, in_channels={cin}, out_channels={cout})")
        if conv.padding_mode != "zeros":
            raise _Skip(f"padding_mode {conv.padding_mode!r} (only 'zeros')")
        padding = _dw_padding(conv)
        if padding is None:
            raise _Skip(f"padding='same' with an even kernel {tuple(conv.kernel_size)} is asymmetric")
        if conv.weight.dtype not in ops.SUPPORTED_DTYPES:
            raise _Skip(f"dtype {conv.weight.dtype} not supported (float32, float16, bfloat16)")
        if self.calls[conv_node.target] > 1:
            raise _Skip(f"conv is called {self.calls[conv_node.target]} times (shared weights)")
        if len(conv_node.args) != 1 or conv_node.kwargs:
            raise _Skip("conv called with extra arguments")
        bn_node = self.single_user(conv_node)
        bn = self.module(bn_node)
        if bn is None or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            after = "several users" if bn_node is None else self.describe(bn_node)
            raise _Skip(f"not followed by BatchNorm2d (followed by {after})")
        problem = self.bn_problem(bn, bn_node, conv_node)
        if problem:
            raise _Skip(problem)
        nodes, parts, made = [conv_node, bn_node], {"conv": (conv_node.target, conv), "bn": (bn_node.target, bn)}, {}
        if isinstance(bn, self.ctx.norm_act):  # timm: the activation is inside the norm module
            act = self.ctx.op_name(bn.act)
            if act not in ops.ACTIVATIONS:
                raise _Skip(f"activation {type(bn.act).__name__} not supported {_DW_ACTIVATIONS}")
            made["act"] = nn.Identity()
        else:
            act_node = self.single_user(bn_node)
            found = None if act_node is None else self.activation(act_node, bn_node)
            if found is None:
                act = "identity"
                made["act"] = nn.Identity()
            elif found[0] not in ops.ACTIVATIONS:
                raise _Skip(f"activation {found[1]} not supported {_DW_ACTIVATIONS}")
            else:
                act = found[0]
                nodes.append(act_node)
                act_module = self.module(act_node)
                if act_module is not None:
                    parts["act"] = (act_node.target, act_module)
                else:
                    made["act"] = activations.MODULES[act]()
        return _Match(DWCONV, nodes, parts, made, dw_detail(conv, act), {"activation": act, "padding": padding})

    # -- squeeze-excitation
    def match_se(self, pool: fx.Node, x: fx.Node, keepdim: bool, chain: list[fx.Node], mul: fx.Node) -> _Match:
        nodes, i, prev = list(chain), 0, pool
        parts: dict[str, tuple[str, nn.Module]] = {}
        made: dict[str, nn.Module] = {}
        pool_module = self.module(pool)
        if pool_module is not None:
            parts["pool"] = (pool.target, pool_module)

        def take_shapes() -> int:
            nonlocal i, prev
            start = i
            while i < len(nodes) and self.is_shape(nodes[i], prev):
                prev, i = nodes[i], i + 1
            return i - start

        def take_fc(role: str, want: type | None) -> nn.Module:
            nonlocal i, prev
            node = nodes[i] if i < len(nodes) else mul
            fc = self.module(node)
            if not isinstance(fc, (nn.Conv2d, nn.Linear)) or (want is not None and not isinstance(fc, want)):
                kind = "a 1x1 Conv2d or Linear" if want is None else want.__name__
                raise _Skip(f"expected {kind} as SE {role}, found {self.describe(node)}")
            problem = _fc_problem(fc)
            if problem:
                raise _Skip(f"SE {role}: {problem}")
            if node.args != (prev,) or node.kwargs or self.calls[node.target] > 1:
                raise _Skip(f"SE {role} '{_join(self.prefix, node.target)}' is shared or called with extra arguments")
            parts[role] = (node.target, fc)
            prev, i = node, i + 1
            return fc

        def take_bn(role: str, linear: bool) -> nn.Module | None:
            nonlocal i, prev
            bn = self.module(nodes[i]) if i < len(nodes) else None
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                return None
            problem = self.bn_problem(bn, nodes[i], prev, linear)
            if problem:
                raise _Skip(f"SE {role}: {problem}")
            parts[role] = (nodes[i].target, bn)
            prev, i = nodes[i], i + 1
            return bn

        def take_activation(role: str, bn: nn.Module | None, allowed: tuple[str, ...], names: str) -> str:
            nonlocal i, prev
            if isinstance(bn, self.ctx.norm_act) and self.ctx.op_name(bn.act) != "identity":
                name, desc = self.ctx.op_name(bn.act), type(bn.act).__name__
            else:
                node = nodes[i] if i < len(nodes) else mul
                found = self.activation(node, prev)
                if found is None:
                    raise _Skip(f"expected the SE {role} after {self.describe(prev)}, found {self.describe(node)}")
                (name, desc), m = found, self.module(node)
                if name in allowed:
                    if m is not None:
                        parts[role] = (node.target, m)
                    else:
                        made[role] = activations.MODULES[name]()
                prev, i = node, i + 1
            if name not in allowed:
                raise _Skip(f"SE {'activation' if role == 'act' else role} {desc} not supported {names}")
            return name

        pre = take_shapes()
        fc1 = take_fc("fc1", None)
        linear = isinstance(fc1, nn.Linear)
        take_activation("act", take_bn("bn1", linear), ("relu",), "(ReLU only)")
        fc2 = take_fc("fc2", type(fc1))
        gate = take_activation("gate", take_bn("bn2", linear), ops.GATES, _SE_GATES)
        post = take_shapes()
        if i != len(nodes):
            raise _Skip(f"unexpected {self.describe(nodes[i])} in the SE path")
        if linear and (not post or (keepdim and not pre)):
            raise _Skip("Linear SE without a flatten before fc1 and a reshape to [N, C, 1, 1] after the gate")
        if not linear and (pre or post or not keepdim):
            raise _Skip("reshape around a 1x1 conv SE")
        c_in = fc1.in_channels if not linear else fc1.in_features
        c_out = fc2.out_channels if not linear else fc2.out_features
        if c_in != c_out:
            raise _Skip(f"SE fc1 takes {c_in} channels but fc2 gives {c_out}")
        detail = f"{'Linear' if linear else '1x1 conv'} FCs, {gate} gate" + (
            ", BatchNorm folded" if "bn1" in parts or "bn2" in parts else "")
        return _Match(SE, [pool, *nodes, mul], parts, made, detail, {"gate": gate, "linear": linear, "x": x})

    # -- rewriting
    def owned(self, path: str, pattern_paths: set[str]) -> bool:
        """Whether every graph reference inside module `path` belongs to the pattern."""
        for n in self.graph.nodes:
            if n.op in ("call_module", "get_attr") and (n.target == path or n.target.startswith(path + ".")):
                if n.target not in pattern_paths:
                    return False
        return True

    def placement(self, match: _Match) -> tuple[str, dict[str, str]]:
        """Where the fused module goes and its children's names: the original names when
        the pattern is all of one module's children, else the role names at the first module's path."""
        paths = {role: p[0] for role, p in match.parts.items()}
        parent = ".".join(_common_prefix([p.split(".")[:-1] for p in paths.values()]))
        if parent and self.owned(parent, set(paths.values())):
            names = {role: p[len(parent) + 1:] for role, p in paths.items()}
            taken = set(names.values())
            if (all("." not in n and not hasattr(nn.Module, n) for n in taken) and len(taken) == len(names)
                    and not taken & (set(match.made) | _ATTRIBUTES)):
                return parent, names
            return parent, {}
        first = paths["conv" if match.kind == DWCONV else "fc1"]
        return first, {}

    def replace(self, match: _Match) -> None:
        place, names = self.placement(match)
        modules = {role: p[1] for role, p in match.parts.items()} | match.made
        where = _join(self.prefix, place)
        if match.kind == DWCONV:
            fused = FusedDWConvBNAct(modules["conv"], modules["bn"], modules["act"], match.extra["activation"],
                                     match.extra["padding"], names, where)
            x = match.nodes[0].args[0]
        else:
            order = ("pool", "fc1", "bn1", "act", "fc2", "bn2", "gate")
            fused = FusedSqueezeExcite({r: modules.get(r) for r in order}, match.extra["gate"],
                                       match.extra["linear"], names, where)
            x = match.extra["x"]
        fused.train(False)
        self.gm.add_submodule(place, fused)
        self.moved.update(p for p, _ in match.parts.values() if p != place and not p.startswith(place + "."))
        last = match.nodes[-1]
        with self.graph.inserting_after(last):
            new = self.graph.call_module(place, (x,))
        last.replace_all_uses_with(new)
        inputs = set()
        for node in reversed(match.nodes):
            inputs.update(node.all_input_nodes)
            self.erase(node)
        self.erase_dead(inputs - set(match.nodes))
        replaced = [_join(self.prefix, n.target) if n.op == "call_module" else self.describe(n) for n in match.nodes]
        self.ctx.report.fused.append(Fused(match.kind, where, tuple(replaced), match.detail))
        self.changed += 1

    def erase(self, node: fx.Node) -> None:
        self.graph.erase_node(node)
        self.erased.add(node)

    def erase_dead(self, nodes: set[fx.Node]) -> None:
        """Erases the nodes (shape arithmetic) left without users, and their inputs likewise."""
        while nodes:
            node = nodes.pop()
            if (node not in self.erased and not node.users and node.op in ("call_function", "call_method")
                    and not node.is_impure()):
                nodes.update(node.all_input_nodes)
                self.erase(node)

    def use_dw_mean(self) -> None:
        """An SE whose input is a fused depthwise block takes its squeeze from that block's pass."""
        for node in list(self.graph.nodes):
            se, dw = self.module(node), self.module(node.args[0] if node.args else None)
            if isinstance(se, FusedSqueezeExcite) and isinstance(dw, FusedDWConvBNAct) and not dw.with_mean:
                dw_node = node.args[0]
                dw.with_mean = True
                with self.graph.inserting_after(dw_node):
                    y = self.graph.call_function(operator.getitem, (dw_node, 0))
                with self.graph.inserting_after(y):
                    mean = self.graph.call_function(operator.getitem, (dw_node, 1))
                dw_node.replace_all_uses_with(y, delete_user_cb=lambda u: u is not y and u is not mean)
                node.args = (y, mean)

    def run(self) -> int:
        skipped, report = [], self.ctx.report
        for node in list(self.graph.nodes):  # nn.Identity calls only hide patterns
            m = self.module(node)
            if type(m) is nn.Identity and len(node.args) == 1 and not node.kwargs and not (
                    m._forward_hooks or m._forward_pre_hooks):
                node.replace_all_uses_with(node.args[0])
                self.erase(node)
        pointwise = []
        for node in list(self.graph.nodes):
            conv = self.module(node)
            if isinstance(conv, nn.Conv2d):
                if conv.groups == 1:
                    pointwise.append(_join(self.prefix, node.target))
                    continue
                try:
                    self.replace(self.match_dw(node))
                except _Skip as why:
                    skipped.append(Skipped(DWCONV, _join(self.prefix, node.target), str(why)))
        for node in list(self.graph.nodes):
            pooled = None if node in self.erased else self.global_pool(node)
            found = pooled and self.se_chain(node, pooled[0])
            if found:
                try:
                    self.replace(self.match_se(node, pooled[0], pooled[1], *found))
                except _Skip as why:
                    skipped.append(Skipped(SE, self.where([node, *found[0]]), str(why)))
        if pointwise:
            more = f" and {len(pointwise) - 1} more" if len(pointwise) > 1 else ""
            skipped.append(Skipped(DWCONV, pointwise[0] + more, "conv not depthwise (groups=1)"))
        report.skipped.extend(skipped)
        if self.changed:
            self.use_dw_mean()
            # delete_all_unused_submodules cannot see these: named_modules() lists a shared
            # module once, under the fused module's path
            referenced = {n.target for n in self.graph.nodes if n.op in ("call_module", "get_attr")}
            for path in self.moved - referenced:
                self.gm.delete_submodule(path)
        return self.changed


def _fc_problem(fc: nn.Module) -> str | None:
    if type(fc) not in (nn.Conv2d, nn.Linear):
        return f"{type(fc).__name__} is a subclass with its own forward"
    if fc.weight.dtype not in ops.SUPPORTED_DTYPES:
        return f"dtype {fc.weight.dtype} not supported (float32, float16, bfloat16)"
    if isinstance(fc, nn.Conv2d) and (fc.kernel_size != (1, 1) or fc.stride != (1, 1) or fc.groups != 1
                                      or fc.padding not in ((0, 0), "valid")):
        return (f"not a plain 1x1 conv (kernel {fc.kernel_size}, stride {fc.stride}, padding {fc.padding}, "
                f"groups {fc.groups})")
    return None


def _dw_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """The conv's symmetric zero padding as a pair, None if 'same' would be asymmetric."""
    if not isinstance(conv.padding, str):
        return (int(conv.padding[0]), int(conv.padding[1]))
    if conv.padding == "valid":
        return (0, 0)
    totals = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation)]
    return None if any(t % 2 for t in totals) else (totals[0] // 2, totals[1] // 2)


# --------------------------------------------------------------------------- driver
def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _fuse_tree(module: nn.Module, prefix: str, ctx: _Context) -> nn.Module:
    """module with its patterns fused (a GraphModule if any were), or module itself."""
    if not module._modules or id(module) in ctx.own:
        return module
    tracer = _Tracer(ctx)
    try:
        graph = tracer.trace(module)
    except Exception as e:
        ctx.report.skipped.append(Skipped(TRACE, prefix or "<model>",
                                          f"torch.fx cannot trace its forward ({_short(e)}); searched its submodules"))
        for name, child in list(module.named_children()):
            new = _fuse_tree(child, _join(prefix, name), ctx)
            if new is not child:
                setattr(module, name, new)
        return module
    gm = fx.GraphModule(module, graph, type(module).__name__)
    gm._tracer_cls = None  # pickling re-traces with a plain fx.Tracer (ours needs its context)
    changed = _Rewriter(gm, prefix, ctx).run()
    target = gm if changed else module
    for path, why in tracer.untraced.items():  # called as one module here
        sub = module.get_submodule(path)
        if not sub._modules:
            ctx.report.skipped.append(Skipped(TRACE, _join(prefix, path),
                                              f"torch.fx cannot trace its forward ({why}); called as one module"))
            continue
        new = _fuse_tree(sub, _join(prefix, path), ctx)  # reports why it fails if it does on its own
        if new is not sub:
            _set_submodule(target, path, new)
    if target is gm:
        gm.graph.lint()
        gm.recompile()
        gm.delete_all_unused_submodules()
        for name, sub in gm.named_modules():  # GraphModule makes plain containers in train mode
            if sub is gm or type(sub) is nn.Module:
                sub.training = module.get_submodule(name).training
    return target


def fuse_graph(model: nn.Module) -> tuple[nn.Module, FuseReport]:
    """(model with its depthwise and SE blocks fused, report).  See the module docstring;
    fuse() is the public entry point.  Works on `model` itself (no copy)."""
    report = FuseReport(type(model).__name__, "torch.fx")
    return _fuse_tree(model, "", _Context(model, report)), report
