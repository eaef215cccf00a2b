"""Drop-in MobileNetV3 Large / Small whose eval forward runs the mnv3 ops.

Same constructor arguments, module tree and state_dict as
torchvision.models.mobilenet_v3_large / mobilenet_v3_small, so torchvision
weights load with strict=True and the logits match torchvision's.  Outputs are
logits (no softmax).  Note: the seed blog's hand-written model differs from
the paper and torchvision (softmax head, a 1x1 conv shortcut on every stride-1
block, BatchNorm inside SE, sigmoid gate); this follows torchvision.

The fused path runs in eval() mode without autograd (torch.inference_mode() or
torch.no_grad()); see fused_layers.py.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from .. import backends, cpu_conv
from ..activations import activation_name
from ..layout import is_nhwc_dense
from .fused_layers import (Conv2dNormActivation, DropsCachesOnCopy, SqueezeExcitation, cached_fold, fused_active,
                           packed_path_ok)


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Channel rounding of the TF reference implementation (as torchvision)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # do not round down by more than 10%
        new_v += divisor
    return new_v


class InvertedResidualConfig:
    def __init__(self, input_channels: int, kernel: int, expanded_channels: int, out_channels: int,
                 use_se: bool, activation: str, stride: int, dilation: int, width_mult: float):
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.kernel = kernel
        self.expanded_channels = self.adjust_channels(expanded_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride
        self.dilation = dilation

    @staticmethod
    def adjust_channels(channels: int, width_mult: float) -> int:
        return _make_divisible(channels * width_mult, 8)


class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise kxk -> [SE] -> project 1x1 (+ residual), as torchvision's.

    Fused: the depthwise layer computes the SE squeeze in the same pass and the
    SE layer consumes it (no separate pooling read of the activation).
    """

    def __init__(self, cnf: InvertedResidualConfig, norm_layer: Callable[..., nn.Module],
                 se_layer: Callable[..., nn.Module] = partial(SqueezeExcitation,
                                                             scale_activation=nn.Hardsigmoid)):
        super().__init__()
        if not (1 <= cnf.stride <= 2):
            raise ValueError(f"stride must be 1 or 2, got {cnf.stride}")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        activation_layer = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, cnf.expanded_channels, kernel_size=1,
                                               norm_layer=norm_layer, activation_layer=activation_layer))
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.expanded_channels,
                                           kernel_size=cnf.kernel, stride=stride, dilation=cnf.dilation,
                                           groups=cnf.expanded_channels, norm_layer=norm_layer,
                                           activation_layer=activation_layer))
        if cnf.use_se:
            squeeze_channels = _make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(se_layer(cnf.expanded_channels, squeeze_channels))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.out_channels, kernel_size=1,
                                           norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels
        self._is_cn = cnf.stride > 1

    @classmethod
    def from_parts(cls, block: nn.Sequential, use_res_connect: bool, out_channels: int,
                   is_cn: bool, training: bool) -> "InvertedResidual":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.block = block
        new.use_res_connect = use_res_connect
        new.out_channels = out_channels
        new._is_cn = is_cn
        new.train(training)
        return new

    def _schedule(self, merge: bool = True):
        """(layer, want_mean, takes_residual, gates_next) of each step of the fused
        forward: the depthwise layer computes the SE squeeze when an SE layer follows;
        the projection takes the residual into its epilogue; an SE layer whose
        projection takes_scale() hands it the gate instead of scaling its input; and a
        block that starts with an expand + depthwise pair the CPU op can run yields
        them as one _Merged step (if merge: the input takes the fp32 CPU path)."""
        layers = list(self.block)
        steps = []
        for i, layer in enumerate(layers):
            last = i + 1 == len(layers)
            after = None if last else layers[i + 1]
            want_mean = isinstance(after, SqueezeExcitation)
            residual = last and self.use_res_connect and isinstance(layer, Conv2dNormActivation)
            gates = (isinstance(layer, SqueezeExcitation) and isinstance(after, Conv2dNormActivation)
                     and after.takes_scale())
            steps.append((layer, want_mean, residual, gates))
        merged = _merged_args(layers, steps[1][1] if len(steps) > 1 else False) if merge else None
        if merged is not None:
            steps[:2] = [(_Merged(merged), steps[1][1], False, False)]
        return steps

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        y, mean, gate = x, None, None
        residual_added = False
        for layer, want_mean, residual, gates in self._schedule(merge=packed_path_ok(x) and is_nhwc_dense(x)):
            if isinstance(layer, _Merged):  # as in the CPU plan: one op
                y, mean = torch.ops.mnv3.pointwise_dwconv.default(y, *layer.args)
                mean = mean if want_mean else None
            elif isinstance(layer, SqueezeExcitation):
                # As in the CPU plan: the projection applies the gate as it reads y.
                gate = layer.gate(y, mean) if gates and packed_path_ok(y) else None
                if gate is None:
                    y = layer.fused(y, mean)
                mean = None
            elif isinstance(layer, Conv2dNormActivation):
                y, mean = layer.fused(y, want_mean, x if residual else None, gate)
                residual_added, gate = residual, None
            else:
                y, mean = layer(y), None
        return y + x if self.use_res_connect and not residual_added else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_active(self, x):
            return self._fused_forward(x)
        return self.forward_native(x)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's math (the unfused modules): what the plan compiler traces."""
        result = self.block(x)
        if self.use_res_connect:
            result = result + x
        return result


@dataclass(frozen=True)
class _Merged:
    """A block's expand and depthwise layers as one mnv3::pointwise_dwconv step."""
    args: tuple  # the op's arguments after the input


def _merged_args(layers, want_mean: bool):
    """The arguments (after the input) of mnv3::pointwise_dwconv running a block's
    expand 1x1 conv and its depthwise conv as one op (the expanded activation is
    never written), or None where the block does not start with such a pair on
    the native fp32 CPU path."""
    if len(layers) < 2 or not all(isinstance(m, Conv2dNormActivation) for m in layers[:2]):
        return None
    expand, dw = layers[0].folded(), layers[1].folded()
    if (expand is None or dw is None or expand.packed is None
            or not expand.packed.linear or not dw.depthwise or dw.weight.dtype != torch.float32
            or dw.weight.shape[2] != dw.weight.shape[3] or (dw.weight.shape[2] - 1) * dw.dilation[0] + 1 > 16):
        return None
    p = expand.packed
    return (p.weight, p.bias, p.activation, dw.weight, dw.bias, list(dw.stride), list(dw.padding),
            list(dw.dilation), dw.activation, want_mean)


class MobileNetV3(DropsCachesOnCopy, nn.Module):
    def __init__(self, inverted_residual_setting: list[InvertedResidualConfig], last_channel: int,
                 num_classes: int = 1000, block: Callable[..., nn.Module] | None = None,
                 norm_layer: Callable[..., nn.Module] | None = None, dropout: float = 0.2,
                 **kwargs: Any) -> None:
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("inverted_residual_setting must not be empty")
        if not (isinstance(inverted_residual_setting, Sequence)
                and all(isinstance(s, InvertedResidualConfig) for s in inverted_residual_setting)):
            raise TypeError("inverted_residual_setting must be a list of InvertedResidualConfig")
        block = block or InvertedResidual
        norm_layer = norm_layer or partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)

        layers: list[nn.Module] = []
        first_out = inverted_residual_setting[0].input_channels
        layers.append(Conv2dNormActivation(3, first_out, kernel_size=3, stride=2, norm_layer=norm_layer,
                                           activation_layer=nn.Hardswish))
        for cnf in inverted_residual_setting:
            layers.append(block(cnf, norm_layer))
        last_in = inverted_residual_setting[-1].out_channels
        last_out = 6 * last_in
        layers.append(Conv2dNormActivation(last_in, last_out, kernel_size=1, norm_layer=norm_layer,
                                           activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_out, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @classmethod
    def from_parts(cls, features: nn.Module, avgpool: nn.Module, classifier: nn.Module,
                   training: bool) -> "MobileNetV3":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.features, new.avgpool, new.classifier = features, avgpool, classifier
        new.train(training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The usual inference call first: a valid fast plan run as one op (the checks of
        # the path below in one function, see _FastPlan.ready; torch.compile traces the path below).
        plan = None if torch.compiler.is_compiling() else self.__dict__.get("_mnv3_fast_plan")
        if plan is not None and isinstance(x, torch.Tensor) and plan.ready(self, x):
            return plan.run_plan([x], *plan.program)[0]
        check_input(self, x)
        fused = fused_active(self, x) and x.dim() == 4
        if fused:
            if packed_path_ok(x):
                plan = self._fast_plan()
                if plan is not None:
                    if torch.is_inference_mode_enabled():
                        return plan.run(x)
                    # Under no_grad the same calls in inference mode skip every op's
                    # autograd dispatch (the mnv3 ops' is Python: ~8 us each; ~10% of
                    # Small at batch 1); the logits come out as an ordinary tensor.
                    with torch.inference_mode():
                        out = plan.run(x)
                    return out.clone()
            # The fused kernels' fast layout; every op preserves it.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        if fused and packed_path_ok(x):
            return _run_head(self._packed_head(), x, self.classifier)
        return self.classifier(x)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's math (the unfused modules): what the plan compiler traces."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)

    def _packed_head(self):
        """The classifier packed for cpu_conv.run (see _pack_head), cached until it changes."""
        return cached_fold(self, partial(_pack_head, self.classifier), of=self.classifier,
                           slot="_mnv3_head_cache")

    def _fast_plan(self) -> _FastPlan | None:
        """The cached CPU fast plan, rebuilt when the model changed (see _FastPlan)."""
        plan = self.__dict__.get("_mnv3_fast_plan")
        if plan is None or not plan.valid():
            plan = _FastPlan.build(self)
            self.__dict__["_mnv3_fast_plan"] = plan
        return plan if plan.program is not None else None

    def _apply(self, *args, **kwargs):  # .to() / .half() / ...: rebuild the plan
        self.__dict__["_mnv3_fast_plan"] = None
        return super()._apply(*args, **kwargs)


_VERSION, _TRAINING = operator.attrgetter("_version"), operator.attrgetter("training")


def input_spec(model: nn.Module) -> tuple[int, torch.dtype] | None:
    """(channels, dtype) the model's input must have: its first convolution's input
    channels and weight dtype; None when model.features has no convolution."""
    for m in model.features.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 4:
            return w.shape[1] * getattr(m, "groups", 1), w.dtype
    return None


def check_input(model: nn.Module, x) -> None:
    """Raises, naming the caller's tensor, when x is not a batch of images the model
    takes: [N, C, H, W] with its input channels, in its weights' dtype.  (Left to
    the layers, these errors name an inner activation or a kernel argument.)"""
    name = type(model).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    spec = input_spec(model)
    channels, dtype = spec if spec is not None else ("C", None)
    if x.dim() != 4:
        hint = "; one image [C, H, W] is x.unsqueeze(0)" if x.dim() == 3 else ""
        raise ValueError(f"{name}: x must be a 4-d batch of images [N, {channels}, H, W], "
                         f"got shape {list(x.shape)}{hint}")
    if spec is None:
        return
    if x.size(1) != channels:
        raise ValueError(f"{name}: the model takes {channels}-channel images [N, {channels}, H, W], got "
                         f"{x.size(1)} channels (x of shape {list(x.shape)})"
                         + ("; a grayscale batch is x.expand(-1, 3, -1, -1)" if x.size(1) == 1 and channels == 3 else ""))
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):  # autocast casts for the layers
        how = (f"x.to({dtype}) / 255 for uint8 images (then normalize)" if not x.is_floating_point()
               else f"x.to({dtype}), or the model to {x.dtype} with model.to({x.dtype})")
        raise TypeError(f"{name}: the model's weights are {dtype} and x is {x.dtype}: convert with {how}")


class _FastPlan:
    """MobileNetV3's fused forward for fp32 CPU inputs on the native backend as one
    mnv3::run_plan call: the plan compiler's program of the model (plan/compiler.py;
    the whole forward must be one segment), without the module path's ~70 module
    calls, fold-cache checks and argument checks per forward (measured: ~20% of the
    forward's time on 2 cores at batch 1; the C++ ops check their arguments themselves).

    Valid while no parameter, buffer or submodule of the model was assigned
    (torch's global registration hooks bump a counter), no tensor changed in place
    (version counters) or moved (data pointers), and no BatchNorm or Dropout layer
    (the layers whose train mode changes the result) changed train/eval mode.  As
    with the fold caches, in-place edits of inference tensors (which have no version
    counter) are not seen.  The check runs on every forward and touches every
    tensor (on 2 cores ~0.2 ms for Large, its objects cold in cache after the
    forward), so it walks only what can change the result: not BatchNorm's
    num_batches_tracked, not the parameter-free activations' modes.  (freeze()
    takes this check out: a copy, compiled once.)
    """

    registrations = [0]
    _hooks_installed = False

    def __init__(self, model: MobileNetV3, program: tuple | None):
        self.program = program  # (tensors, program) of mnv3::run_plan, or None: the module path
        self.run_plan = torch.ops.mnv3.run_plan.default
        spec = input_spec(model)
        self.in_channels = spec[0] if spec is not None else -1
        self.counter = _FastPlan.registrations[0]
        self.modes = [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout))]
        self.training = [m.training for m in self.modes]
        tensors = [t for m in model.modules()
                   for name, t in (*m._parameters.items(), *m._buffers.items())
                   if t is not None and name != "num_batches_tracked"]
        self.versioned = [t for t in tensors if not t.is_inference()]
        self.versions = list(map(_VERSION, self.versioned))
        self.tensors = tensors
        self.ptrs = list(map(torch.Tensor.data_ptr, tensors))

    @classmethod
    def build(cls, model: MobileNetV3) -> _FastPlan:
        from ..plan.compiler import compile_model

        cls._install_hooks()
        if any(m.training for m in model.modules()):  # a layer in train mode runs its modules
            return cls(model, None)
        with torch.no_grad():
            single = compile_model(model).single_call()
        return cls(model, None if single is None else (single.tensors, single.program))

    @classmethod
    def _install_hooks(cls) -> None:
        if cls._hooks_installed:
            return
        from torch.nn.modules import module as nn_module

        def bump(*args):
            cls.registrations[0] += 1

        nn_module.register_module_parameter_registration_hook(bump)
        nn_module.register_module_buffer_registration_hook(bump)
        nn_module.register_module_module_registration_hook(bump)
        cls._hooks_installed = True

    def valid(self) -> bool:
        # Lists of ints via map: no per-tensor tuples (each forward's allocations
        # drive Python's garbage collector, measured ~0.2 ms per forward on Large).
        return (self.counter == _FastPlan.registrations[0]
                and list(map(_TRAINING, self.modes)) == self.training
                and list(map(_VERSION, self.versioned)) == self.versions
                and list(map(torch.Tensor.data_ptr, self.tensors)) == self.ptrs)

    def ready(self, model: MobileNetV3, x: torch.Tensor) -> bool:
        """Whether model.forward(x) may call the run_plan program at once: an fp32 CPU
        4-d x (in any layout: the executor converts what a step needs) under
        inference_mode, outside autocast (and torch.compile: see forward), the native
        backend, the model in eval mode and the plan valid.  The general path's checks
        (fused_active, packed_path_ok, _fast_plan) for that case, in one call: the
        forward's Python runs with cold caches, after the program has streamed the
        weights through them, so every call and lookup costs (measured on 2 cores with
        the caches thrashed between calls: 403 -> 365 us for Large; most of the rest is
        valid(), which touches every parameter and buffer)."""
        return (self.program is not None and torch.is_inference_mode_enabled() and not model.training
                and x.dim() == 4 and x.size(1) == self.in_channels and backends.cpu_fast_path(x) and self.valid())

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_plan([x], *self.program)[0]


def _run_head(head, x: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
    """The classifier on pooled features x: its packed Linears (Linear + activation,
    Dropout = identity in eval, Linear) where _pack_head packed them, else the module."""
    if head is None:
        return classifier(x)
    return cpu_conv.run(head[1], cpu_conv.run(head[0], x))


def _pack_head(classifier: nn.Module):
    """The classifier's two Linear layers packed for cpu_conv.run (the first with its
    activation fused), or None unless it is torchvision's
    Sequential(Linear, activation, Dropout, Linear)."""
    mods = list(classifier) if type(classifier) is nn.Sequential else []
    if len(mods) != 4 or type(mods[0]) is not nn.Linear or type(mods[2]) is not nn.Dropout \
            or type(mods[3]) is not nn.Linear or mods[0].bias is None or mods[3].bias is None:
        return None
    act = activation_name(mods[1])
    if act is None:
        return None
    first = cpu_conv.prepack_linear(mods[0].weight.detach(), mods[0].bias.detach(), act)
    second = cpu_conv.prepack_linear(mods[3].weight.detach(), mods[3].bias.detach())
    return None if first is None or second is None else (first, second)


def _mobilenet_v3_conf(arch: str, width_mult: float = 1.0, reduced_tail: bool = False,
                       dilated: bool = False, **kwargs: Any):
    reduce_divider = 2 if reduced_tail else 1
    dilation = 2 if dilated else 1
    bneck_conf = partial(InvertedResidualConfig, width_mult=width_mult)
    adjust_channels = partial(InvertedResidualConfig.adjust_channels, width_mult=width_mult)
    rd = reduce_divider
    if arch == "mobilenet_v3_large":
        setting = [
            bneck_conf(16, 3, 16, 16, False, "RE", 1, 1),
            bneck_conf(16, 3, 64, 24, False, "RE", 2, 1),  # C1
            bneck_conf(24, 3, 72, 24, False, "RE", 1, 1),
            bneck_conf(24, 5, 72, 40, True, "RE", 2, 1),  # C2
            bneck_conf(40, 5, 120, 40, True, "RE", 1, 1),
            bneck_conf(40, 5, 120, 40, True, "RE", 1, 1),
            bneck_conf(40, 3, 240, 80, False, "HS", 2, 1),  # C3
            bneck_conf(80, 3, 200, 80, False, "HS", 1, 1),
            bneck_conf(80, 3, 184, 80, False, "HS", 1, 1),
            bneck_conf(80, 3, 184, 80, False, "HS", 1, 1),
            bneck_conf(80, 3, 480, 112, True, "HS", 1, 1),
            bneck_conf(112, 3, 672, 112, True, "HS", 1, 1),
            bneck_conf(112, 5, 672, 160 // rd, True, "HS", 2, dilation),  # C4
            bneck_conf(160 // rd, 5, 960 // rd, 160 // rd, True, "HS", 1, dilation),
            bneck_conf(160 // rd, 5, 960 // rd, 160 // rd, True, "HS", 1, dilation),
        ]
        last_channel = adjust_channels(1280 // rd)  # C5
    elif arch == "mobilenet_v3_small":
        setting = [
            bneck_conf(16, 3, 16, 16, True, "RE", 2, 1),  # C1
            bneck_conf(16, 3, 72, 24, False, "RE", 2, 1),  # C2
            bneck_conf(24, 3, 88, 24, False, "RE", 1, 1),
            bneck_conf(24, 5, 96, 40, True, "HS", 2, 1),  # C3
            bneck_conf(40, 5, 240, 40, True, "HS", 1, 1),
            bneck_conf(40, 5, 240, 40, True, "HS", 1, 1),
            bneck_conf(40, 5, 120, 48, True, "HS", 1, 1),
            bneck_conf(48, 5, 144, 48, True, "HS", 1, 1),
            bneck_conf(48, 5, 288, 96 // rd, True, "HS", 2, dilation),  # C4
            bneck_conf(96 // rd, 5, 576 // rd, 96 // rd, True, "HS", 1, dilation),
            bneck_conf(96 // rd, 5, 576 // rd, 96 // rd, True, "HS", 1, dilation),
        ]
        last_channel = adjust_channels(1024 // rd)  # C5
    else:
        raise ValueError(f"arch must be mobilenet_v3_large or mobilenet_v3_small, got {arch!r}")
    return setting, last_channel


def _load_torchvision_weights(arch: str, weights, progress: bool, kwargs: dict):
    """Resolves a torchvision weights enum (or its name); returns the state_dict to load."""
    try:
        from torchvision import models as tv_models
    except ImportError as e:
        raise ImportError(f"weights={weights!r} needs torchvision to resolve and download them") from e
    enum_cls = {"mobilenet_v3_large": tv_models.MobileNet_V3_Large_Weights,
                "mobilenet_v3_small": tv_models.MobileNet_V3_Small_Weights}[arch]
    weights = enum_cls.verify(weights)
    num_classes = len(weights.meta["categories"])
    if kwargs.get("num_classes", num_classes) != num_classes:
        raise ValueError(f"num_classes={kwargs['num_classes']} does not match the {num_classes} "
                         f"classes of weights {weights}")
    kwargs["num_classes"] = num_classes
    return weights.get_state_dict(progress=progress, check_hash=True)


def _mobilenet_v3(arch: str, weights, progress: bool, **kwargs: Any) -> MobileNetV3:
    state_dict = _load_torchvision_weights(arch, weights, progress, kwargs) if weights is not None else None
    setting, last_channel = _mobilenet_v3_conf(arch, **kwargs)
    for k in ("width_mult", "reduced_tail", "dilated"):
        kwargs.pop(k, None)
    model = MobileNetV3(setting, last_channel, **kwargs)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def mobilenet_v3_large(*, weights=None, progress: bool = True, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Large, as torchvision.models.mobilenet_v3_large (same arguments:
    weights, progress, num_classes, width_mult, reduced_tail, dilated, dropout,
    norm_layer, block)."""
    return _mobilenet_v3("mobilenet_v3_large", weights, progress, **kwargs)


def mobilenet_v3_small(*, weights=None, progress: bool = True, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Small, as torchvision.models.mobilenet_v3_small."""
    return _mobilenet_v3("mobilenet_v3_small", weights, progress, **kwargs)
