"""torchvision-compatible building blocks whose eval forward runs the mnv3 ops.

Each layer keeps torchvision's submodules and attribute names, so state_dicts
match key for key.  In train() mode, and in eval() mode while autograd needs
gradients, they run their ordinary modules (the exact torchvision math, so
fine-tuning and gradients work).  Otherwise (eval() under torch.no_grad() or
torch.inference_mode()) they run the fused path: BatchNorm folded once into
the conv weights and cached; depthwise conv + bias + activation (+ the SE
squeeze) and SE excite + scale as single ops.

The fold cache is dropped on train()/eval(), on load_state_dict, and whenever
a parameter or buffer of the layer changes (in-place update, replacement,
dtype or device move): its key holds each tensor's identity, version counter
and data pointer.  Parameters created under torch.inference_mode have no
version counter; in-place edits made to them inside inference_mode are not
seen (call clear_fold_cache() on the model's layers after such an edit).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import backends, cpu_conv, functional, ops
from ..activations import activation_name, gate_name
from ..layout import is_nhwc_dense, pack_pointwise_weight
from ..reference import ACTIVATION_FNS, fold_batchnorm

_grad_warning_shown = False


def fused_active(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether `module` runs its fused path for input x (see the module docstring)."""
    if module.training:
        return False
    if not torch.is_grad_enabled():
        return True
    if x.requires_grad or any(p.requires_grad for p in module.parameters()):
        global _grad_warning_shown
        if not _grad_warning_shown:
            _grad_warning_shown = True
            warnings.warn(
                "mnv3_kernels: eval-mode forward with autograd enabled runs the unfused modules so "
                "gradients stay correct; run inference under torch.inference_mode() or torch.no_grad() "
                "(or call model.requires_grad_(False)) to use the fused kernels.",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    return True


def _state_key(module: nn.Module) -> tuple:
    # Inference tensors (made under torch.inference_mode) have no version
    # counter: for them only replacement and moves are seen, which is all that
    # can happen to them outside inference_mode (in-place updates are refused there).
    # Direct dict walks: this runs on every fused forward of every layer, and
    # the layers here hold only leaf modules (conv, norm, activation).
    # Submodules enter by identity and type, so replacing a parameter-free one
    # (an activation or gate module) is seen too.
    key = []
    for m in (module, *module._modules.values()):
        if m is not module and m._modules:
            return (tuple((id(sub), type(sub)) for sub in module.modules())
                    + tuple((id(t), -1 if t.is_inference() else t._version, t.data_ptr())
                            for t in (*module.parameters(), *module.buffers())))
        key.append((id(m), type(m)))
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None:
                key.append((id(t), -1 if t.is_inference() else t._version, t.data_ptr()))
    return tuple(key)


def packed_path_ok(x: torch.Tensor) -> bool:
    """Whether x may take a packed layer (cpu_conv.py): backends.cpu_fast_path."""
    return backends.cpu_fast_path(x)


def cached_fold(owner: nn.Module, fold, of: nn.Module | None = None, slot: str = "_mnv3_fold_cache"):
    """fold(), cached in owner.__dict__[slot] until the parameters, buffers or submodules
    of `of` (default: owner) change (see _state_key); traced afresh under torch.compile."""
    if torch.compiler.is_compiling():  # traced into the graph; freezing constant-folds it
        return fold()
    key = _state_key(owner if of is None else of)
    cache = owner.__dict__.get(slot)
    if cache is None or cache[0] != key:
        with torch.no_grad():
            cache = (key, fold())
        owner.__dict__[slot] = cache
    return cache[1]


class DropsCachesOnCopy:
    """Leaves the derived caches (folded and packed weights, the CPU plan) out of
    copy.deepcopy and pickling (torch.save(model)): they are derived data, and a copy
    rebuilds its caches from its own parameters on first use."""

    CACHE_SLOTS = ("_mnv3_fold_cache", "_mnv3_head_cache", "_mnv3_fast_plan")

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self.CACHE_SLOTS}


class FoldCacheMixin(DropsCachesOnCopy):
    """Caches self._fold() (folded weights) until the layer's state changes."""

    def _fold(self):
        raise NotImplementedError

    def folded(self):
        return cached_fold(self, self._fold)

    def clear_fold_cache(self) -> None:
        self.__dict__["_mnv3_fold_cache"] = None

    def train(self, mode: bool = True):
        self.clear_fold_cache()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_fold_cache()
        return super()._load_from_state_dict(*args, **kwargs)


class FusedModule(FoldCacheMixin):
    """The one family of fused modules: the drop-in model's layers here and fuse()'s
    modules for other models (fx_fuse.py).  Each keeps the original modules as its
    children and has forward_native, their ordinary math: forward runs the fused ops in
    eval() without autograd (fused_active), else forward_native, so train() mode trains
    the original modules exactly (BatchNorm statistics included) and gradients flow.
    The plan compiler traces forward_native."""

    def forward_native(self, *args):
        raise NotImplementedError


@dataclass(frozen=True)
class FoldedConv:
    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    activation: str
    depthwise: bool  # runs as mnv3::dwconv_bias_act
    packed: cpu_conv.PackedConv | None = None  # CPU fp32: the conv on an mnv3 op (cpu_conv.py)


def tap_major(w: torch.Tensor) -> torch.Tensor:
    """A depthwise filter [C, 1, kh, kw] with the same values, stored tap-major
    ([kh][kw][C] in memory), the layout the CPU kernel's channels-last walk reads:
    it then uses the weight in place instead of repacking it on every call."""
    return w.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)


def _foldable_bn(bn: nn.Module | None) -> bool:
    return bn is None or (
        type(bn) is nn.BatchNorm2d and bn.running_mean is not None and bn.running_var is not None
    )


class Conv2dNormActivation(FusedModule, nn.Sequential):
    """Conv2d -> [BatchNorm2d] -> [activation], as torchvision.ops.Conv2dNormActivation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=3,
        stride=1,
        padding=None,
        groups: int = 1,
        norm_layer=nn.BatchNorm2d,
        activation_layer=nn.ReLU,
        dilation=1,
        inplace: bool | None = True,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
            d = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
            padding = tuple((k[i] - 1) // 2 * d[i] for i in range(2))
            if isinstance(kernel_size, int) and isinstance(dilation, int):
                padding = padding[0]
        if bias is None:
            bias = norm_layer is None
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation,
                      groups=groups, bias=bias)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            params = {} if inplace is None else {"inplace": inplace}
            layers.append(activation_layer(**params))
        super().__init__(*layers)
        self.out_channels = out_channels

    @classmethod
    def from_sequential(cls, seq: nn.Sequential) -> "Conv2dNormActivation":
        """Wraps the same submodules (same parameters, same state_dict keys)."""
        new = cls.__new__(cls)
        nn.Sequential.__init__(new)
        for name, child in seq.named_children():
            new.add_module(name, child)
        new.out_channels = getattr(seq, "out_channels", seq[0].out_channels)
        new.train(seq.training)
        return new

    def _parts(self):
        """(conv, bn or None, activation name) or None when this layer cannot be fused."""
        mods = list(self.children())
        if not mods or type(mods[0]) is not nn.Conv2d or len(mods) > 3:
            return None
        conv, rest = mods[0], mods[1:]
        bn = rest.pop(0) if rest and isinstance(rest[0], nn.modules.batchnorm._BatchNorm) else None
        act = activation_name(rest[0]) if rest else "identity"
        if len(rest) > 1 or act is None or not _foldable_bn(bn):
            return None
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            return None
        return conv, bn, act

    def _fold(self) -> FoldedConv | None:
        parts = self._parts()
        if parts is None:
            return None
        conv, bn, act = parts
        if bn is None:
            w = conv.weight.detach()
            b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(w[:, 0, 0, 0])
        else:
            w, b = fold_batchnorm(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(),
                                  None if bn.weight is None else bn.weight.detach(),
                                  None if bn.bias is None else bn.bias.detach(),
                                  bn.running_mean, bn.running_var, bn.eps)
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        packed = None
        if depthwise and w.device.type == "cpu" and w.dtype == torch.float32:
            w = tap_major(w)
        if not depthwise:
            w = w.contiguous(memory_format=torch.channels_last)
            if not torch.compiler.is_compiling():  # compiled graphs get inductor's own conv fusion
                packed = cpu_conv.prepack(w, b, conv.stride, conv.padding, conv.dilation, conv.groups, act)
        return FoldedConv(w, b, tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation),
                          conv.groups, act, depthwise, packed)

    def fused(self, x: torch.Tensor, want_mean: bool = False, residual: torch.Tensor | None = None,
              scale: torch.Tensor | None = None):
        """(y, mean or None): the fused computation, y + residual when residual is given;
        mean is the fp32 [N, C] SE squeeze of y.  scale: an [N, Cin] factor per input
        channel (an SE gate), applied to x as it is read where the layer takes_scale(),
        else to x first."""
        f = self.folded()
        if scale is not None:
            if f is not None and f.packed is not None and self._packed_path(f, x, residual):
                y = cpu_conv.run(f.packed, x, residual, scale)
                return y, (y.mean(dim=(2, 3), dtype=torch.float32) if want_mean else None)
            x = x * scale.to(x.dtype)[:, :, None, None]
        if f is None:  # e.g. a norm layer we cannot fold: the ordinary modules
            y = nn.Sequential.forward(self, x)
        elif f.depthwise and x.dtype in ops.SUPPORTED_DTYPES:
            out = functional.dwconv_bias_act(x, f.weight, f.bias, f.stride, f.padding, f.dilation, f.activation,
                                      with_mean=want_mean)
            y, mean = out if want_mean else (out, None)
            return (y if residual is None else y + residual), mean
        elif self._packed_path(f, x, residual):
            y = cpu_conv.run(f.packed, x, residual)
            return y, (y.mean(dim=(2, 3), dtype=torch.float32) if want_mean else None)
        else:
            y = F.conv2d(x, f.weight, f.bias, f.stride, f.padding, f.dilation, f.groups)
            y = ACTIVATION_FNS[f.activation](y)
        if residual is not None:
            y = y + residual
        return y, (y.mean(dim=(2, 3), dtype=torch.float32) if want_mean else None)

    def takes_scale(self) -> bool:
        """Whether fused(..., scale=g) applies g as it reads its input: a 1x1 conv on
        mnv3::pointwise_bias_act (the SE gate fused into the projection)."""
        f = self.folded()
        return f is not None and f.packed is not None

    @staticmethod
    def _packed_path(f: FoldedConv, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        return (f.packed is not None and is_nhwc_dense(x) and packed_path_ok(x)
                and (residual is None or (f.activation == "identity" and is_nhwc_dense(residual)
                                          and residual.dtype == x.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_active(self, x):
            return self.fused(x)[0]
        return nn.Sequential.forward(self, x)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's math (the unfused modules): what the plan compiler traces."""
        return nn.Sequential.forward(self, x)


@dataclass(frozen=True)
class FoldedSE:
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    gate: str

    def panels(self):
        """(w1, w2) packed for mnv3::pointwise_bias_act (layout.pack_pointwise_weight),
        made on first use; (None, None) without the CPU extension or off the fp32 CPU."""
        cached = self.__dict__.get("_panels")
        if cached is None:
            usable = self.w1.dtype == torch.float32 and self.w1.device.type == "cpu" and cpu_conv.native_available()
            cached = (pack_pointwise_weight(self.w1), pack_pointwise_weight(self.w2)) if usable else (None, None)
            object.__setattr__(self, "_panels", cached)
        return cached


def _gate(f: FoldedSE, y: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    if mean is None:
        mean = y.mean(dim=(2, 3), dtype=torch.float32)
    k1, k2 = f.panels()
    if k1 is not None:  # both fc layers and the gate in one call, on the CPU GEMM's packed weights
        return torch.ops.mnv3.se_gate.default(mean, k1, f.b1, k2, f.b2, f.gate)
    hidden = torch.addmm(f.b1, mean, f.w1.t()).relu_()
    logits = torch.addmm(f.b2, hidden, f.w2.t())
    return logits.sigmoid_() if f.gate == "sigmoid" else torch.ops.aten.hardsigmoid_.default(logits)


class SqueezeExcitation(FusedModule, nn.Module):
    """avgpool -> fc1 -> activation -> fc2 -> scale_activation -> x * scale,
    as torchvision.ops.SqueezeExcitation (same attribute names)."""

    def __init__(self, input_channels: int, squeeze_channels: int, activation=nn.ReLU,
                 scale_activation=nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    @classmethod
    def from_module(cls, se: nn.Module) -> "SqueezeExcitation":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in ("avgpool", "fc1", "fc2", "activation", "scale_activation"):
            new.add_module(name, getattr(se, name))
        new.train(se.training)
        return new

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def _fold(self) -> FoldedSE | None:
        gate = gate_name(self.scale_activation)
        fc1, fc2 = self.fc1, self.fc2
        if (gate is None or type(self.activation) is not nn.ReLU or type(fc1) is not nn.Conv2d
                or type(fc2) is not nn.Conv2d or fc1.bias is None or fc2.bias is None
                or fc1.kernel_size != (1, 1) or fc2.kernel_size != (1, 1)
                or fc1.groups != 1 or fc2.groups != 1):
            return None
        return FoldedSE(fc1.weight.detach().flatten(1), fc1.bias.detach(),
                        fc2.weight.detach().flatten(1), fc2.bias.detach(), gate)

    def fused(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        f = self.folded()
        if f is None or x.dtype not in ops.SUPPORTED_DTYPES:
            return self._scale(x) * x
        if pooled is None:
            pooled = x.mean(dim=(2, 3), dtype=torch.float32)
        return functional.se_excite_scale(x, pooled, f.w1, f.b1, f.w2, f.b2, f.gate)

    def gate(self, y: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor | None:
        """The fp32 [N, C] gate for y (mean: y's squeeze, if computed), as the plan's gate
        step computes it, or None where the SE layer cannot be folded or y is not fp32 CPU."""
        f = self.folded()
        if f is None or f.w1.dtype != torch.float32 or f.w1.device.type != "cpu" or y.dtype != torch.float32:
            return None
        return _gate(f, y, mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_active(self, x):
            return self.fused(x)
        return self.forward_native(x)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's math (the unfused modules): what the plan compiler traces."""
        return self._scale(x) * x
