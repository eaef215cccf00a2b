"""The plan compiler: a model's torch.fx graph -> segments of mnv3 op steps.

compile_model(model) traces the model's inference forward (module boundaries
do not matter; mnv3_kernels' own modules are traced through their
forward_native, the ordinary-module math) and lowers what the steps
(steps.py) compute:
  * k x k dense conv (groups 1, at most MAX_CONV_TAPS taps: the stem) + BatchNorm
    + activation -> conv
  * 1x1 conv (stride 1, no padding) or Linear + BatchNorm + activation -> pw, with
    the residual add after it and an SE gate on its input fused in
  * depthwise conv + BatchNorm + activation -> dw (with its spatial mean where a
    pool or an SE reads it); an expand pw that only this dw reads -> pwdw; a
    projection pw without SE scale that alone reads a pwdw -> pwdwpw (CPU)
  * squeeze-excitation: global average pool -> 1x1 conv or Linear -> [BatchNorm]
    -> ReLU -> 1x1 conv or Linear -> [BatchNorm] -> Hardsigmoid / Sigmoid -> x *
    -> a gate step (its gate then scales the next projection's input), or the
    se step where no projection reads the scaled tensor
  * global average pool, flatten, Linear (+ activation), Dropout and Identity in
    eval, the add of two values, an activation (ReLU, ReLU6, Hardswish) of a value
  * F.interpolate(x, size=..., mode="bilinear"), size two ints or another
    tensor's t.shape[-2:] (a segmentation head's upsampling) -> resize
Everything else (a SiLU, a nearest or scale-factor interpolation, a custom module) stays in the
graph and runs as the original code between the plan's segments;
Plan.left_alone names each such node and why.

The plan is device-neutral: its steps hold the folded weights in their
logical layout ([Cout, Cin] matrices, [C, 1, k, k] filters); the Target it is
compiled for prepares them for its executor and says which steps that
executor has (CPU: the packed layouts mnv3::run_plan's kernels read, every
step; CUDA: plain layouts, the interpreter on the CUDA kernels, every step).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import activations, backends, fx_fuse, ops
from ..layout import pack_pointwise_weight
from ..reference import fold_batchnorm
from ..vocabulary import ACTIVATIONS, activation_code, gate_code
from .steps import BY_NAME, HEADER_FIXED

# A dense conv lowers to the conv step when its filter has at most this many
# taps (Cin * kh * kw): the stem has 27.  The conv op packs its weight per call
# and has no cache blocking over taps: wider dense convs stay as they are.
MAX_CONV_TAPS = 64

# What a value is: a 4-d map [N, C, H, W]; a pooled [N, C, 1, 1] (held as [N, C]);
# an [N, C] matrix; a tensor of the graph the plan did not compute.
MAP, VEC4, VEC2, GRAPH = "map", "vec4", "vec2", "graph"
_ADDS = {operator.add, torch.add, operator.iadd}


class Value:
    """A tensor of the plan.  Reshapes of a pooled value are views: `base` is the
    value whose storage they are."""

    __slots__ = ("kind", "node", "producer", "base")

    def __init__(self, kind: str, node: fx.Node, base: Value | None = None):
        self.kind, self.node, self.producer, self.base = kind, node, None, base

    def root(self) -> Value:
        return self if self.base is None else self.base.root()


@dataclass(eq=False)
class Instr:
    step: str  # a steps.STEPS name, or "scale" (pending: fused into a pw, else made an se step)
    outs: dict  # out operand -> Value (None: not wanted)
    ins: dict  # in operand -> Value (None: none)
    tensors: dict  # tensor operand -> torch.Tensor, logical layout
    args: dict  # pair operand -> [h, w]; act / gate operand -> its name
    pos: int  # where it runs: the graph position of the node it replaces
    where: str  # the module path it came from (for reports)


@dataclass
class LeftAlone:
    where: str
    what: str
    why: str


_Skip = fx_fuse._Skip  # one exception for 'this pattern does not apply', fuse()'s and the compiler's


class _Tracer(fx_fuse._Tracer):
    """fuse()'s tracer (timm's BatchNormAct2d and recognized activations as leaves, an
    untraceable submodule as one call), tracing mnv3_kernels' modules through their
    forward_native: the ordinary-module math their fused forward computes."""

    def is_leaf_module(self, m, qualified_name):
        if hasattr(m, "forward_native") and id(m) not in self.forced:
            return False
        return super().is_leaf_module(m, qualified_name)

    def call_module(self, m, forward, args, kwargs):
        if hasattr(m, "forward_native") and id(m) not in self.forced:
            forward = m.forward_native
        return super().call_module(m, forward, args, kwargs)


class _NativeRoot(nn.Module):
    """A root traced through its forward_native: the same children under the same names."""

    def __init__(self, root: nn.Module):
        super().__init__()
        for name, child in root.named_children():
            self.add_module(name, child)
        self.__dict__["_root"] = root

    def forward(self, x):  # fx makes a placeholder per named parameter
        return self.__dict__["_root"].forward_native(x)


def trace(model: nn.Module):
    """(GraphModule of model's inference forward, fuse()'s context of the model)."""
    ctx = fx_fuse._Context(model, fx_fuse.FuseReport(type(model).__name__, "plan"))
    tracer = _Tracer(ctx)
    root = _NativeRoot(model) if hasattr(model, "forward_native") else model
    gm = fx.GraphModule(root, tracer.trace(root), type(model).__name__)
    gm.graph.eliminate_dead_code()  # e.g. the squeeze of a fused depthwise module for an SE that ignores it
    gm._tracer_cls = None  # pickling re-traces with a plain fx.Tracer
    return gm, ctx


# --------------------------------------------------------------------------- lowering
class _Lowering(fx_fuse._Rewriter):
    """fx nodes -> Instrs: pass 1 lowers node by node (a conv with the BatchNorm and
    activation after it, an SE chain), pass 2 fuses steps (pool into the depthwise
    step's mean, the SE scale into the projection, the residual add into the
    projection, the expand into the depthwise step).  fuse()'s rewriter is its base:
    the same questions about nodes, the same squeeze-excitation matcher."""

    def __init__(self, gm: fx.GraphModule, ctx, target):
        super().__init__(gm, "", ctx)
        self.target = target
        self.nodes = list(gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.value: dict[fx.Node, Value] = {}  # every lowered node, and graph tensors the plan reads
        self.absorbed: set[fx.Node] = set()  # nodes folded into another node's step
        self.instrs: list[Instr] = []
        self.why: dict[fx.Node, str] = {}

    # -- helpers
    def path(self, node: fx.Node) -> str:
        """The module path a node came from (for reports)."""
        if node.op == "call_module":
            return node.target
        stack = node.meta.get("nn_module_stack")
        return list(stack.values())[-1][0] if stack else node.name

    def activation_of(self, node: fx.Node, prev: fx.Node) -> str | None:
        """The op name (activation or gate) node computes of prev alone, else None."""
        if node.op not in ("call_module", "call_function", "call_method") or not node.args or node.args[0] is not prev:
            return None
        if any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
            return None
        m = self.module(node)
        if m is not None:
            return self.ctx.op_name(m) if len(node.args) == 1 and not node.kwargs else None
        table = activations.FUNCTIONS if node.op == "call_function" else activations.METHODS
        return table.get(node.target)

    def eval_bn(self, node: fx.Node, prev: fx.Node, dims: int):
        """The eval-mode BatchNorm that node applies to prev alone, else None."""
        m = self.module(node)
        allowed = (nn.BatchNorm1d,) if dims == 2 else (nn.BatchNorm2d, *self.ctx.norm_act)
        if m is None or type(m) not in allowed or node.args != (prev,) or node.kwargs:
            return None
        if m.training or m.running_mean is None or m.running_var is None:
            return None
        if isinstance(m, self.ctx.norm_act) and type(getattr(m, "drop", None)) not in (nn.Identity, nn.Dropout):
            return None
        return m

    def emit(self, step: str, node: fx.Node, outs: dict, ins: dict, tensors: dict, args: dict) -> Instr:
        ins_ = Instr(step, outs, ins, tensors, args, self.pos[node], self.path(node))
        self.absorbed.add(node)
        for v in outs.values():
            if v is not None:
                v.producer = ins_
        self.instrs.append(ins_)
        return ins_

    def read(self, node) -> Value:
        """The value of node as a step's input: its lowered value, else the graph's tensor."""
        if node not in self.value:
            self.value[node] = Value(GRAPH, node)
        return self.value[node]

    def parameter(self, node) -> torch.Tensor | None:
        """The tensor a get_attr node names (a parameter or buffer of the model), else None."""
        if not isinstance(node, fx.Node) or node.op != "get_attr":
            return None
        owner, _, name = node.target.rpartition(".")
        t = getattr(self.gm.get_submodule(owner) if owner else self.gm, name)
        return t.detach() if isinstance(t, torch.Tensor) else None

    @staticmethod
    def folded(layer: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
        w = layer.weight.detach()
        b = None if layer.bias is None else layer.bias.detach()
        if bn is None:
            return w, (torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if b is None else b)
        return fold_batchnorm(w, b, None if bn.weight is None else bn.weight.detach(),
                              None if bn.bias is None else bn.bias.detach(), bn.running_mean, bn.running_var, bn.eps)

    # -- conv / Linear + BatchNorm + activation
    def tail(self, node: fx.Node, dims: int) -> tuple[fx.Node, nn.Module | None, str]:
        """(last node, BatchNorm, activation) of the single-user chain after node: an eval
        BatchNorm (timm's BatchNormAct2d with its activation), then one activation."""
        last, bn = node, None
        user = self.single_user(last)
        if user is not None and self.eval_bn(user, last, dims) is not None:
            bn, last = self.eval_bn(user, last, dims), user
            if isinstance(bn, self.ctx.norm_act):
                act = self.ctx.op_name(bn.act)
                if act not in ACTIVATIONS:
                    raise _Skip(f"{type(bn).__name__}'s activation {type(bn.act).__name__} is not supported "
                                f"{ACTIVATIONS}")
                self.absorbed.add(last)
                return last, bn, act
            self.absorbed.add(last)
        user = self.single_user(last)
        act = None if user is None else self.activation_of(user, last)
        if act in ACTIVATIONS:
            self.absorbed.add(user)
            return user, bn, act
        return last, bn, "identity"

    def lower_conv(self, node: fx.Node, conv: nn.Conv2d) -> None:
        if type(conv) is not nn.Conv2d:
            raise _Skip(f"{type(conv).__name__} is a subclass of Conv2d with its own forward")
        if len(node.args) != 1 or node.kwargs:
            raise _Skip("conv called with extra arguments")
        if conv.padding_mode != "zeros":
            raise _Skip(f"padding_mode {conv.padding_mode!r} (only 'zeros')")
        padding = fx_fuse._dw_padding(conv)
        if padding is None:
            raise _Skip("asymmetric 'same' padding")
        x = self.read(node.args[0])
        g, cin, cout, k = conv.groups, conv.in_channels, conv.out_channels, tuple(conv.kernel_size)
        pointwise = k == (1, 1) and g == 1 and tuple(conv.stride) == (1, 1) and padding == (0, 0)
        depthwise = g == cin == cout and g > 1
        if x.kind in (VEC2, "gate") or (x.kind == VEC4 and not pointwise):
            raise _Skip("a conv other than 1x1 on a pooled value")
        if not (pointwise or depthwise or (g == 1 and cin * k[0] * k[1] <= MAX_CONV_TAPS)):
            why = f"groups={g}" if g != 1 else f"{cin * k[0] * k[1]} taps per output, the conv step takes <= {MAX_CONV_TAPS}"
            raise _Skip(f"a dense conv no step runs ({why})")
        last, bn, act = self.tail(node, 4)
        w, b = self.folded(conv, bn)
        y = self.value[last] = Value(VEC4 if x.kind == VEC4 else MAP, last)
        if pointwise:
            self.emit("pw", node, {"y": y}, {"x": x, "scale": None, "residual": None},
                      {"weight": w.flatten(1), "bias": b}, {"activation": act})
            return
        pairs = {"stride": list(conv.stride), "padding": list(padding), "dilation": list(conv.dilation)}
        step = "dw" if depthwise else "conv"
        self.emit(step, node, {"y": y, "mean": None} if depthwise else {"y": y}, {"x": x}, {"weight": w, "bias": b},
                  {**pairs, "activation": act})

    def lower_linear(self, node: fx.Node, linear: nn.Linear | None) -> None:
        """An nn.Linear, or (linear None) F.linear(x, weight, bias) on the model's own parameters."""
        if linear is None:
            params = [self.parameter(a) for a in (*node.args[1:], *node.kwargs.values())]
            if len(node.args) + len(node.kwargs) not in (2, 3) or any(p is None for p in params) or (
                    node.kwargs and set(node.kwargs) != {"bias"}):
                raise _Skip("F.linear on tensors that are not the model's parameters")
            linear = SimpleNamespace(weight=params[0], bias=params[1] if len(params) > 1 else None)
            args = node.args[:1]
        else:
            if type(linear) is not nn.Linear:
                raise _Skip(f"{type(linear).__name__} is a subclass of Linear with its own forward")
            args = node.args
        x = self.value.get(node.args[0]) if node.args else None
        if x is None or x.kind != VEC2 or len(args) != 1 or (node.kwargs and node.op == "call_module"):
            raise _Skip("a Linear on a tensor the plan does not know as [N, C] (a pooled and flattened map)")
        last, bn, act = self.tail(node, 2)
        w, b = self.folded(linear, bn)
        y = self.value[last] = Value(VEC2, last)
        self.emit("pw", node, {"y": y}, {"x": x, "scale": None, "residual": None}, {"weight": w, "bias": b},
                  {"activation": act})

    # -- reshapes of pooled values
    def reshaped_kind(self, node: fx.Node, x: Value) -> str | None:
        """The kind of node, a natural reshape of a pooled value x ([N, C, 1, 1] <-> [N, C]), else None."""
        m = self.module(node)
        if m is not None:
            flat = type(m) is nn.Flatten and (m.start_dim, m.end_dim) == (1, -1)
            return VEC2 if flat and x.kind == VEC4 and len(node.args) == 1 else None
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
        rest = list(node.args[1:])
        if node.kwargs:
            return None
        if name == "flatten" and x.kind == VEC4 and rest in ([1], [1, -1]):
            return VEC2
        if name in ("view", "reshape") and x.kind == VEC4 and len(rest) == 2 and rest[1] == -1:
            n = rest[0]  # x.view(x.size(0), -1)
            is_batch = (isinstance(n, fx.Node) and n.op == "call_method" and n.target == "size"
                        and n.args == (node.args[0], 0))
            return VEC2 if is_batch else None
        if node.op == "call_function" and node.target is operator.getitem and x.kind == VEC2:
            index = node.args[1]
            natural = isinstance(index, tuple) and len(index) == 4 and index[2:] == (None, None)
            return VEC4 if natural and all(i == slice(None) for i in index[:2]) else None
        return None

    # -- the nodes
    def lower_node(self, node: fx.Node) -> None:
        m = self.module(node)
        if isinstance(m, nn.Conv2d):
            return self.lower_conv(node, m)
        if isinstance(m, nn.Linear):
            return self.lower_linear(node, m)
        if node.op == "call_function" and node.target is F.linear:  # e.g. timm's Linear traced through
            return self.lower_linear(node, None)
        first = node.args[0] if node.args else None
        known = self.value.get(first) if isinstance(first, fx.Node) else None
        if known is not None and known.kind != GRAPH:
            if type(m) in (nn.Identity, nn.Dropout) and len(node.args) == 1 and not node.kwargs:
                self.value[node] = known  # eval: the value itself
                return None
            if node.op == "call_function" and node.target is F.dropout and not node.kwargs.get("training", False):
                self.value[node] = known
                return None
        pooled = self.global_pool(node)
        if pooled is not None:
            return self.lower_pool(node, pooled)
        if known is not None and known.kind in (VEC4, VEC2):
            kind = self.reshaped_kind(node, known)
            if kind is not None:
                self.value[node] = Value(kind, node, base=known)
                return None
        if (node.op == "call_function" and node.target in _ADDS) or (node.op == "call_method" and node.target == "add"):
            return self.lower_add(node)
        if node.op == "call_function" and node.target is F.interpolate:
            return self.lower_resize(node)
        act = self.activation_of(node, first) if known is not None and known.kind != GRAPH else None
        if act in ACTIVATIONS:
            return self.lower_activation(node, known, act)
        if act is not None:
            raise _Skip(f"{act} outside a squeeze-excitation block")
        raise _Skip(self.not_supported(node))

    def not_supported(self, node: fx.Node) -> str:
        m = self.module(node)
        if m is not None:
            if self.ctx.op_name(m) is None and fx_fuse._is_activation_class(type(m)):
                return f"activation {type(m).__name__} not supported {ACTIVATIONS}"
            return f"{type(m).__name__} has no plan step"
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
        return f"{name} has no plan step"

    def lower_pool(self, node: fx.Node, pooled: tuple) -> None:
        x = self.read(pooled[0])
        if x.kind not in (MAP, GRAPH):
            raise _Skip("a pool of a pooled value")
        if not self.lower_se(node, x):
            y = self.value[node] = Value(VEC4 if pooled[1] else VEC2, node)
            self.emit("pool", node, {"y": y}, {"x": x}, {}, {})

    def lower_add(self, node: fx.Node) -> None:
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
            raise _Skip("an add with a scalar or alpha")
        if not any(self.value.get(a) is not None and self.value[a].kind != GRAPH for a in node.args):
            raise _Skip("an add of two tensors the plan does not compute")
        a, b = self.read(node.args[0]), self.read(node.args[1])
        kinds = {a.kind, b.kind} - {GRAPH}
        if len(kinds) != 1 or kinds & {VEC4, "gate"}:
            raise _Skip(f"an add of a {a.kind} and a {b.kind} value")
        y = self.value[node] = Value(kinds.pop(), node)
        self.emit("add", node, {"y": y}, {"a": a, "b": b}, {}, {})

    def lower_resize(self, node: fx.Node) -> None:
        """F.interpolate(x, size=..., mode="bilinear") as a resize step: size a pair of
        ints, or another tensor's spatial size (t.shape[-2:], t.shape[2:], t.size()[2:])."""
        names = ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
        a = dict(zip(names, node.args)) | dict(node.kwargs)
        mode = a.get("mode", "nearest")
        if mode != "bilinear" or a.get("antialias", False):
            raise _Skip(f"interpolate mode {mode!r}{' with antialias' if a.get('antialias') else ''} "
                        "(the resize step is bilinear, antialias off)")
        if a.get("scale_factor") is not None or a.get("size") is None:
            raise _Skip("interpolate by scale_factor (the resize step takes a size, or another tensor's size)")
        x = a.get("input")
        if not isinstance(x, fx.Node) or (x in self.value and self.value[x].kind not in (MAP, GRAPH)):
            raise _Skip("interpolate of a value that is not a 4-d map")
        like, size = self.size_source(a["size"]), [0, 0]
        if like is None:
            size = a["size"]
            size = [size, size] if isinstance(size, int) else list(size) if isinstance(size, (tuple, list)) else None
            if size is None or len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
                raise _Skip(f"interpolate size {a['size']} (the resize step takes two ints, or t.shape[-2:])")
        ins = {"x": self.read(x), "like": None if like is None else self.read(like)}
        if ins["like"] is not None and ins["like"].kind not in (MAP, GRAPH):
            raise _Skip("interpolate to the size of a value that is not a 4-d map")
        y = self.value[node] = Value(MAP, node)
        self.emit("resize", node, {"y": y}, ins, {}, {"size": size, "align_corners": bool(a.get("align_corners"))})
        if like is not None:  # the size arithmetic read only here: not a graph reader of like, no segment split
            size_node = a["size"]
            if len(size_node.users) == 1 and len(size_node.args[0].users) == 1:
                self.absorbed.update((size_node, size_node.args[0]))

    @staticmethod
    def size_source(size) -> fx.Node | None:
        """The tensor node t of a size t.shape[-2:] / t.shape[2:] / t.size()[-2:] / t.size()[2:], else None."""
        if not (isinstance(size, fx.Node) and size.op == "call_function" and size.target is operator.getitem
                and size.args[1] in (slice(-2, None), slice(2, None))):
            return None
        base = size.args[0]
        if not isinstance(base, fx.Node):
            return None
        if base.op == "call_function" and base.target is getattr and base.args[1] == "shape":
            return base.args[0]
        if base.op == "call_method" and base.target == "size" and len(base.args) == 1 and not base.kwargs:
            return base.args[0]
        return None

    def lower_activation(self, node: fx.Node, x: Value, act: str) -> None:
        p = x.producer
        if (p is not None and p.step in ("pw", "dw", "conv") and p.args["activation"] == "identity"
                and p.ins.get("residual") is None and p.outs["y"] is x and len(x.node.users) == 1):
            p.args["activation"] = act  # the step's own epilogue
            self.absorbed.add(node)
            x.node = node
            self.value[node] = x
            return
        if x.kind not in (MAP, VEC2, VEC4):
            raise _Skip(f"{act} of a {x.kind} value")
        y = self.value[node] = Value(x.kind, node)
        self.emit("act", node, {"y": y}, {"x": x}, {}, {"activation": act})

    # -- squeeze-excitation
    def lower_se(self, pool_node: fx.Node, x: Value) -> bool:
        """pool -> fc1 -> [bn] -> relu -> fc2 -> [bn] -> gate -> [reshape] -> x * gate as a pool,
        a gate step and a pending scale; False where pool_node does not start such a chain."""
        chain = self.se_chain(pool_node, pool_node.args[0])
        if chain is None:
            return False
        nodes, mul = chain
        try:
            match = self.match_se(pool_node, pool_node.args[0], self.global_pool(pool_node)[1], nodes, mul)
        except _Skip:  # not an SE the gate step computes: its parts lower one by one
            return False
        layers = {role: module for role, (_, module) in match.parts.items()}
        w1, b1 = self.folded(layers["fc1"], layers.get("bn1"))
        w2, b2 = self.folded(layers["fc2"], layers.get("bn2"))
        w1, w2, gate = w1.flatten(1), w2.flatten(1), match.extra["gate"]
        mean = self.value[pool_node] = Value(VEC2, pool_node)
        self.emit("pool", pool_node, {"y": mean}, {"x": x}, {}, {})
        g = Value("gate", nodes[-1])
        self.emit("gate", nodes[0], {"g": g}, {"mean": mean}, {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, {"gate": gate})
        y = self.value[mul] = Value(MAP, mul)
        self.emit("scale", mul, {"y": y}, {"x": x, "g": g}, {}, {})
        self.absorbed.update(nodes)
        return True

    # -- the walk
    def run(self) -> None:
        for node in self.nodes:
            if node in self.absorbed or node.op in ("placeholder", "output", "get_attr"):
                continue
            try:
                self.lower_node(node)
            except _Skip as e:
                self.why[node] = str(e)
        for ins in self.instrs:  # steps read storage: a reshaped value's root
            for name, v in ins.ins.items():
                if v is not None:
                    ins.ins[name] = v.root()
        self.outside = self.outside_readers()
        self.fuse()

    def lowered(self, node: fx.Node) -> bool:
        v = self.value.get(node)
        return node in self.absorbed or (v is not None and v.kind != GRAPH)

    def outside_readers(self) -> dict[Value, int]:
        """How many graph nodes that stay in the graph read each value (or a view of it)."""
        count: dict[Value, int] = {}
        for node, v in self.value.items():
            if v.kind == GRAPH:
                continue
            readers = sum(1 for u in node.users if u.op == "output" or not self.lowered(u))
            if readers:
                count[v.root()] = count.get(v.root(), 0) + readers
        return count

    # -- pass 2: fusions between steps
    def readers(self) -> dict[Value, list[tuple[Instr, str]]]:
        found: dict[Value, list] = {}
        for ins in self.instrs:
            for name, v in ins.ins.items():
                if v is not None:
                    found.setdefault(v, []).append((ins, name))
        return found

    def sole_reader(self, v: Value, readers) -> tuple[Instr, str] | None:
        found = readers.get(v, [])
        return found[0] if len(found) == 1 and not self.outside.get(v) else None

    def fuse(self) -> None:
        rules = {"pool": self.fuse_pool, "scale": self.fuse_scale, "add": self.fuse_residual}
        if "pwdw" in self.target.steps:
            rules["dw"] = self.fuse_pwdw
        progress = True
        while progress:
            progress = False
            readers = self.readers()
            for ins in self.instrs:
                rule = rules.get(ins.step)
                if rule is not None and rule(ins, readers):
                    progress = True
                    break
        readers = self.readers()
        for ins in self.instrs:  # a scale no projection took: the se step (excite and scale in one op)
            if ins.step == "scale":
                gate = ins.ins["g"].producer
                ins.step, ins.tensors, ins.args = "se", dict(gate.tensors), {"gate": gate.args["gate"]}
                ins.ins = {"x": ins.ins["x"], "mean": gate.ins["mean"]}
                if len(readers.get(gate.outs["g"], [])) == 1 and not self.outside.get(gate.outs["g"]):
                    gate.step = None
        self.instrs = [ins for ins in self.instrs if ins.step is not None]
        if "pwdwpw" in self.target.steps:  # after the residuals joined their projections
            readers = self.readers()
            for ins in list(self.instrs):
                self.fuse_pwdwpw(ins, readers)

    def fuse_pwdwpw(self, pw: Instr, readers) -> bool:
        """A projection (no SE scale) read from a pwdw step whose output nothing else reads
        and whose mean no one wants: one pwdwpw step where the projection runs."""
        if pw.step != "pw" or pw.ins["scale"] is not None:
            return False
        x = pw.ins["x"]
        p = x.producer
        if (p is None or p.step != "pwdw" or p.outs.get("mean") is not None or x.kind != MAP
                or self.sole_reader(x, readers) != (pw, "x")):
            return False
        pw.step, pw.ins = "pwdwpw", {"x": p.ins["x"], "residual": pw.ins["residual"]}
        pw.tensors = {**p.tensors, "proj_weight": pw.tensors["weight"], "proj_bias": pw.tensors["bias"]}
        pw.args = {**p.args, "proj_activation": pw.args["activation"]}
        self.instrs.remove(p)
        return True

    def fuse_pool(self, pool: Instr, readers) -> bool:
        """A pool of a depthwise step's output: that step's mean output."""
        p = pool.ins["x"].producer
        if p is None or p.step not in ("dw", "pwdw") or p.outs.get("mean") is not None:
            return False
        p.outs["mean"] = pool.outs["y"]
        pool.outs["y"].producer = p
        self.instrs.remove(pool)
        return True

    def fuse_scale(self, scale: Instr, readers) -> bool:
        """x * gate read only by a 1x1 conv: the conv scales x as it reads it."""
        found = self.sole_reader(scale.outs["y"], readers)
        if found is None:
            return False
        pw, name = found
        if pw.step != "pw" or name != "x" or pw.ins["scale"] is not None:
            return False
        pw.ins["x"], pw.ins["scale"] = scale.ins["x"], scale.ins["g"]
        self.instrs.remove(scale)
        return True

    def fuse_residual(self, add: Instr, readers) -> bool:
        """pw(...) + r, the pw's output read by nothing else: the pw adds r in its epilogue."""
        for mine, other in (("a", "b"), ("b", "a")):
            v = add.ins[mine]
            p = v.producer
            if (p is None or p.step != "pw" or p.ins["residual"] is not None or p.outs["y"] is not v
                    or add.ins[other] is v or self.sole_reader(v, readers) != (add, mine)):
                continue
            p.ins["residual"] = add.ins[other]
            p.outs["y"] = add.outs["y"]
            add.outs["y"].producer = p
            # The pw now runs where the add did: r may be computed after the pw's own node.
            self.instrs.remove(p)
            self.instrs[self.instrs.index(add)] = p
            p.pos = add.pos
            return True
        return False

    def fuse_pwdw(self, dw: Instr, readers) -> bool:
        """A 1x1 expand read only by the depthwise conv after it: one pwdw step."""
        x = dw.ins["x"]
        pw = x.producer
        k = tuple(dw.tensors["weight"].shape[2:])
        if (pw is None or pw.step != "pw" or x.kind != MAP or pw.ins["scale"] is not None
                or pw.ins["residual"] is not None or self.sole_reader(x, readers) != (dw, "x") or k[0] != k[1]
                or dw.args["stride"][0] != dw.args["stride"][1] or dw.args["dilation"][0] != dw.args["dilation"][1]
                or (k[0] - 1) * dw.args["dilation"][0] + 1 > ops.PWDW_MAX_SPAN[self.target.name]):
            return False
        dw.step, dw.ins = "pwdw", {"x": pw.ins["x"]}
        dw.tensors = {"weight": pw.tensors["weight"], "bias": pw.tensors["bias"], "dw_weight": dw.tensors["weight"],
                      "dw_bias": dw.tensors["bias"]}
        dw.args = {"activation": pw.args["activation"], **{k_: dw.args[k_] for k_ in ("stride", "padding", "dilation")},
                   "dw_activation": dw.args["activation"]}
        self.instrs.remove(pw)
        return True


# --------------------------------------------------------------------------- segments
def for_cpu(step: str, name: str, t: torch.Tensor) -> torch.Tensor:
    """A step's tensor in the layout mnv3::run_plan's CPU kernels read without repacking:
    1x1 weights as 16-channel panels, depthwise filters tap-major."""
    from ..models.fused_layers import tap_major

    if t.dtype != torch.float32 or t.device.type != "cpu":
        return t.contiguous()
    if (step, name) in (("pw", "weight"), ("pwdw", "weight"), ("pwdwpw", "weight"), ("pwdwpw", "proj_weight"),
                        ("gate", "w1"), ("gate", "w2")):
        return pack_pointwise_weight(t)
    if (step, name) in (("dw", "weight"), ("pwdw", "dw_weight"), ("pwdwpw", "dw_weight")):
        return tap_major(t)
    return t.contiguous()


def for_cuda(step: str, name: str, t: torch.Tensor) -> torch.Tensor:
    """A step's tensor as the CUDA kernels read it: the plain layout, contiguous."""
    return t.contiguous()


@dataclass(frozen=True)
class Target:
    """What a plan is compiled for: the steps its executor runs, the layout its
    tensors take (prepare) and how a segment runs on its inputs (execute)."""

    name: str
    steps: frozenset
    prepare: object  # (step, operand, tensor) -> tensor

    def execute(self, inputs: list, tensors: list, program: list) -> list:
        from .interpreter import KernelOps, interpret, run_reference

        if self.name == "cpu" and all(backends.cpu_fast_path(t) for t in inputs):
            return torch.ops.mnv3.run_plan.default(inputs, tensors, program)
        if (self.name == "cuda" and inputs and all(t.is_cuda for t in inputs)
                and backends.resolve("cuda") is backends.Backend.NATIVE):
            return interpret(inputs, tensors, program, KernelOps(torch.ops.mnv3))
        return run_reference(inputs, tensors, program)


# The fp32 CPU fast path: every step, mnv3::run_plan in one op call.
CPU = Target("cpu", frozenset(BY_NAME), for_cpu)
# The CUDA kernels (interpreter.KernelOps): every step but pwdwpw (no CUDA kernel
# runs a block in one launch: it would be a pwdw and a pw launch), plain weights.
CUDA = Target("cuda", frozenset(BY_NAME) - {"pwdwpw"}, for_cuda)


def encode(instrs: list, inputs: list, outputs: list, prepare=for_cpu) -> tuple[list, list]:
    """(tensors, program) of a segment: slots allocated in order, a slot reused once
    the value in it is dead (a forward holds only its live activations)."""
    last_read: dict[Value, int] = {}
    for i, ins in enumerate(instrs):
        for v in ins.ins.values():
            if v is not None:
                last_read[v] = i
    slot: dict[Value, int] = {v: i for i, v in enumerate(inputs)}
    free: list[int] = []
    n_slots = len(inputs)
    keep = set(outputs)
    tensors, body = [], []
    for i, ins in enumerate(instrs):
        for v in set(v for v in ins.ins.values() if v is not None):
            if last_read[v] == i and v not in keep and v in slot:
                free.append(slot[v])
        unread = []
        step = BY_NAME[ins.step]
        body.append(step.code)
        for name, kind in step.operands:
            if kind in ("out", "opt_out"):
                v = ins.outs.get(name)
                if v is None:
                    body.append(-1)
                    continue
                if free:
                    slot[v] = free.pop()
                else:
                    slot[v], n_slots = n_slots, n_slots + 1
                body.append(slot[v])
                if v not in last_read and v not in keep:  # written, never read: free after this step
                    unread.append(slot[v])
            elif kind in ("in", "opt_in"):
                v = ins.ins.get(name)
                body.append(-1 if v is None else slot[v])
            elif kind == "tensor":
                tensors.append(prepare(ins.step, name, ins.tensors[name]))
                body.append(len(tensors) - 1)
            elif kind == "pair":
                body += [int(e) for e in ins.args[name]]
            elif kind == "act":
                body.append(activation_code(ins.args[name]))
            elif kind == "flag":
                body.append(int(bool(ins.args[name])))
            else:
                body.append(gate_code(ins.args[name]))
        free += unread
    header = [n_slots, len(inputs), len(outputs), *(slot[v] for v in outputs)]
    assert len(header) == HEADER_FIXED + len(outputs)
    return tensors, header + body


class SegmentModule(nn.Module):
    """One segment of a compiled plan, run as its target says (Target.execute): for the
    CPU one mnv3::run_plan call on fp32 CPU tensors (the native backend), for CUDA the
    interpreter on the CUDA kernels; else the interpreter on the reference ops (any
    device and dtype).  Its weights are buffers-free constants (the plan's)."""

    def __init__(self, tensors: list, program: list, instrs: list, target: Target = CPU):
        super().__init__()
        self.tensors, self.program, self.target = tensors, program, target
        self.steps = [ins.step for ins in instrs]
        self.where = [ins.where for ins in instrs]

    def forward(self, *inputs):
        return self.target.execute(list(inputs), self.tensors, self.program)

    def extra_repr(self) -> str:
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[s] = counts.get(s, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in counts.items())


@dataclass
class Plan:
    """A compiled model: graph_module runs it (segments as `plan_segment_<i>` modules,
    the rest as the model's own code); left_alone says what was not lowered and why."""

    graph_module: fx.GraphModule
    segments: list
    left_alone: list

    def single_call(self) -> SegmentModule | None:
        """The one segment when the whole forward is that segment on the model's one input,
        its first output returned as it is (then a caller may call run_plan directly)."""
        nodes = list(self.graph_module.graph.nodes)
        if len(self.segments) != 1 or [n.op for n in nodes] != ["placeholder", "call_module", "call_function",
                                                                "output"]:
            return None
        _, call, item, out = nodes
        if call.args != (nodes[0],) or item.args != (call, 0) or out.args != (item,):
            return None
        return self.segments[0]

    def describe(self) -> str:
        """What runs where: each segment's steps, and each part left to the original code with why."""
        lines = [f"{len(self.segments)} plan segment(s), {len(self.left_alone)} part(s) left to the original code"]
        for i, seg in enumerate(self.segments):
            lines.append(f"  plan_segment_{i}: {seg.extra_repr()}")
        for part in self.left_alone:
            lines.append(f"  left alone: {part.what} at {part.where}: {part.why}")
        return "\n".join(lines)


def _view_as(graph: fx.Graph, raw: fx.Node, kind: str) -> fx.Node:
    """The graph's form of a plan value: a pooled [N, C] as [N, C, 1, 1] where the model had that."""
    if kind in (VEC4, "gate"):
        return graph.call_function(operator.getitem, (raw, (slice(None), slice(None), None, None)))
    return raw


def compile_model(model: nn.Module, target: Target = CPU) -> Plan:
    """The plan of model's inference forward for `target` (model in eval mode; BatchNorm
    is folded with its running statistics now: the plan holds copies of no weight it
    does not fold, so compile again after changing the model)."""
    gm, ctx = trace(model)
    low = _Lowering(gm, ctx, target)
    low.run()
    instrs = sorted(low.instrs, key=lambda ins: ins.pos)
    at_pos: dict[int, list] = {}
    for ins in instrs:
        at_pos.setdefault(ins.pos, []).append(ins)
    views: dict[Value, list[fx.Node]] = {}  # root value -> graph nodes showing it (and their kinds)
    for node, v in low.value.items():
        if v.kind != GRAPH:
            views.setdefault(v.root(), []).append(node)

    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    raw: dict[Value, fx.Node] = {}  # a plan value's storage in the new graph
    segments: list[SegmentModule] = []
    current: list[Instr] = []
    readers = low.readers()

    def close() -> None:
        if not current:
            return
        index = len(segments)
        mine = {v for ins in current for v in ins.outs.values() if v is not None}
        inputs, outputs = [], []
        for ins in current:
            for v in ins.ins.values():
                if v is not None and v not in mine and v not in inputs:
                    inputs.append(v)
        for v in mine:
            if low.outside.get(v) or any(r not in current for r, _ in readers.get(v, [])):
                outputs.append(v)
        outputs.sort(key=lambda v: v.node.name)
        tensors, program = encode(current, inputs, outputs, target.prepare)
        name = f"plan_segment_{index}"
        seg = SegmentModule(tensors, program, current, target)
        gm.add_submodule(name, seg)
        args = tuple(env[v.node] if v.kind == GRAPH else raw[v] for v in inputs)
        call = graph.call_module(name, args)
        for k, v in enumerate(outputs):
            raw[v] = graph.call_function(operator.getitem, (call, k))
            for node in views.get(v, []):
                env[node] = _view_as(graph, raw[v], low.value[node].kind)
        segments.append(seg)
        current.clear()

    for i, node in enumerate(low.nodes):
        for ins in at_pos.get(i, []):
            current.append(ins)
        if low.lowered(node):
            continue
        reads_current = any(n in low.value and low.value[n].kind != GRAPH and low.value[n].root().producer in current
                            for n in node.all_input_nodes)
        if node.op == "output" or reads_current:
            close()
        env[node] = graph.node_copy(node, lambda n: env[n])
    gm.graph = graph
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    left = [LeftAlone(low.path(n), low.describe(n), why) for n, why in low.why.items()
            if n in env and not _is_shape_arithmetic(n) and type(low.module(n)) not in (nn.Identity, nn.Dropout)]
    return Plan(gm, segments, left)


def _is_shape_arithmetic(node: fx.Node) -> bool:
    """Nodes on sizes and Python values, not on tensors the plan could have run."""
    return node.op == "call_function" and node.target in (getattr, operator.getitem, operator.eq, torch._assert) \
        or node.op == "call_method" and node.target in ("size", "dim")
