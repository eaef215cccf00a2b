"""fuse(): turn an existing MobileNetV3 into the fused model.

Supported today: torchvision's MobileNetV3 (Large and Small, any width or
tail option) and mnv3_kernels' own.  The result shares nothing with the input
unless inplace=True, keeps the same state_dict keys, and runs the mnv3 ops in
eval() mode without autograd.
"""

from __future__ import annotations

import copy

from torch import nn

from .models.fused_layers import Conv2dNormActivation, SqueezeExcitation
from .models.mobilenetv3 import InvertedResidual, MobileNetV3


def _torchvision_classes():
    try:
        from torchvision.models import mobilenetv3 as tv_mnv3
        from torchvision.ops import misc as tv_misc
    except ImportError:
        return None
    return {
        "model": tv_mnv3.MobileNetV3,
        "block": tv_mnv3.InvertedResidual,
        "cna": tv_misc.Conv2dNormActivation,
        "se": tv_misc.SqueezeExcitation,
    }


def _convert(module: nn.Module, tv: dict) -> nn.Module:
    """The fused twin of a torchvision layer (sharing its submodules), else the layer itself."""
    if isinstance(module, tv["cna"]) and isinstance(module, nn.Sequential):
        return Conv2dNormActivation.from_sequential(module)
    if isinstance(module, tv["se"]):
        return SqueezeExcitation.from_module(module)
    if isinstance(module, tv["block"]):
        block = nn.Sequential(*[_convert(m, tv) for m in module.block])
        return InvertedResidual.from_parts(block, module.use_res_connect, module.out_channels,
                                           module._is_cn, module.training)
    return module


def fuse(model: nn.Module, inplace: bool = False) -> MobileNetV3:
    """Returns `model` as an mnv3_kernels MobileNetV3 that runs the fused ops.

    model: a torchvision.models.MobileNetV3 (mobilenet_v3_large / _small) or an
    mnv3_kernels MobileNetV3.  Its parameters and buffers are reused (deep-copied
    first unless inplace=True); the state_dict keys are unchanged, and its
    train/eval mode is kept.
    """
    if isinstance(model, MobileNetV3):
        return model if inplace else copy.deepcopy(model)
    tv = _torchvision_classes()
    if tv is None or not isinstance(model, tv["model"]):
        raise TypeError(
            "fuse(model): model must be a torchvision.models.MobileNetV3 (mobilenet_v3_large or "
            f"mobilenet_v3_small) or an mnv3_kernels MobileNetV3, got {type(model).__module__}."
            f"{type(model).__name__}"
        )
    if not inplace:
        model = copy.deepcopy(model)
    features = nn.Sequential(*[_convert(m, tv) for m in model.features])
    return MobileNetV3.from_parts(features, model.avgpool, model.classifier, model.training)
