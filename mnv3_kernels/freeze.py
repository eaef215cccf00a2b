"""freeze(): a MobileNetV3 -> its CPU inference as one op on weights folded once.

The live fused model (mnv3_kernels.MobileNetV3, or fuse() of torchvision's)
follows every change to its parameters, buffers, submodules and train/eval
modes: each forward first checks that its cached plan is still valid, touching
all ~270 parameter and buffer tensors (on 2 cores ~0.2-0.3 ms of a ~3.5 ms
MobileNetV3-Large forward at batch 1).  For deployment, freeze() takes that
check out, like torch.jit.freeze, inductor's freezing or an ONNX Runtime
session: it folds and packs the weights once, copies them, and returns a module
whose forward is one mnv3::run_plan call.  Later changes to the source model do
not reach it; freeze again after changing the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from . import backends
from .fuse import _torchvision_classes, fuse
from .models.mobilenetv3 import MobileNetV3, _FastPlan


class FrozenMobileNetV3(nn.Module):
    """A frozen MobileNetV3 (made by mnv3_kernels.freeze): float32 CPU inference only.

    forward(x): x a float32 CPU tensor [N, 3, H, W] (any layout) -> logits [N, classes],
    the same values as the fused model it was frozen from at that time, bit for bit.
    It has no parameters (its weights are constants) and no backward; it cannot be
    put in train mode, moved to another device or dtype, or run under autocast
    (each raises); inputs outside inference_mode get an ordinary tensor back.
    """

    def __init__(self, tensors: list[torch.Tensor], program: list[int], in_channels: int, source: str):
        super().__init__()
        self._tensors, self._program = tensors, program
        self.in_channels, self.source = in_channels, source
        self._run_plan = torch.ops.mnv3.run_plan.default
        super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FrozenMobileNetV3: x must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or x.size(1) != self.in_channels:
            raise ValueError(f"FrozenMobileNetV3: x must be a float32 CPU tensor [N, {self.in_channels}, H, W]; "
                             f"got {x.dtype} on {x.device} with shape {list(x.shape)}")
        if x.requires_grad:
            raise RuntimeError("FrozenMobileNetV3: x requires grad, but a frozen model has no backward; "
                               "take gradients through the unfrozen model")
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("FrozenMobileNetV3 runs in float32; call it outside torch.autocast('cpu'), "
                               "or run the unfrozen model under autocast")
        if not backends.native_on_cpu():
            raise RuntimeError("FrozenMobileNetV3 runs the native CPU kernels, but another backend is selected "
                               f"for CPU ({backends.ENV_VAR} or mnv3_kernels.use_backend); use the unfrozen model")
        if torch.is_inference_mode_enabled():
            return self._run_plan(x, self._tensors, self._program)
        with torch.inference_mode():  # no autograd dispatch for the op; an ordinary tensor out
            y = self._run_plan(x, self._tensors, self._program)
        return y.clone()

    def train(self, mode: bool = True) -> FrozenMobileNetV3:
        if mode:
            raise RuntimeError("FrozenMobileNetV3 is inference-only and cannot be put in train mode; "
                               "train the unfrozen model and freeze it again")
        return super().train(False)

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .half() / .float() ...: the packed weights are float32 CPU constants.
        raise RuntimeError("FrozenMobileNetV3 holds float32 CPU weights packed for its kernels and cannot be "
                           "converted or moved; convert the unfrozen model and freeze it again")

    def extra_repr(self) -> str:
        mb = sum(t.numel() * t.element_size() for t in self._tensors) / 2**20
        return f"source={self.source}, tensors={len(self._tensors)}, weights={mb:.1f} MB"


def freeze(model: nn.Module) -> FrozenMobileNetV3:
    """Returns a FrozenMobileNetV3: `model`'s float32 CPU inference as one op call on
    weights folded (BatchNorm into the convs) and packed now, and copied: later changes
    to `model` do not reach it.

    model: a torchvision MobileNetV3 (fused first, on a copy) or an mnv3_kernels
    MobileNetV3, in eval() mode, with float32 CPU parameters; its layers must all be
    ones the fused CPU program covers (torchvision's and mnv3_kernels' Large and Small
    are, at any width).  model itself is not changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze(model): model must be a torch.nn.Module, got {type(model).__name__}")
    source = type(model).__name__
    if not isinstance(model, MobileNetV3):
        tv = _torchvision_classes()
        if tv is None or not isinstance(model, tv["model"]):
            cls = type(model)  # by module path: timm's MobileNetV3 has torchvision's class name
            raise TypeError("freeze(model): model must be torchvision.models.MobileNetV3 or "
                            f"mnv3_kernels.MobileNetV3, got {cls.__module__}.{cls.__qualname__}; "
                            "other models: mnv3_kernels.fuse(model)")
        model = fuse(model)  # on a copy
    if any(m.training for m in model.modules()):
        raise ValueError("freeze(model): call model.eval() first (BatchNorm folds its running statistics only "
                         "in eval mode)")
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_floating_point() and (t.device.type != "cpu" or t.dtype != torch.float32):
            raise ValueError(f"freeze(model): the frozen model runs the float32 CPU kernels; model's {name} is "
                             f"{t.dtype} on {t.device} (freeze a float32 CPU copy)")
    native, why_not = backends.native_availability("cpu")
    if not native:
        raise RuntimeError(f"freeze(model): {why_not}")
    with torch.inference_mode():
        plan = _FastPlan.build(model)
        if plan.program is None:
            raise ValueError("freeze(model): some of model's layers are not covered by the fused CPU program (a "
                             "changed layer or head); run the fused model (mnv3_kernels.fuse) instead")
        tensors, program = plan.program
        # Copies: some plan tensors are model's own (biases used as they are).
        tensors = [t.clone() for t in tensors]
    in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    return FrozenMobileNetV3(tensors, list(program), in_channels, source)
