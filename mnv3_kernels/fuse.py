"""fuse(): an existing model -> the same model running the mnv3 ops.

torchvision's MobileNetV3 (Large and Small, any width or tail option) and
mnv3_kernels' own become the drop-in mnv3_kernels.MobileNetV3 (same state_dict
keys, trainable: train() runs the unfused modules).  Any other model goes
through the torch.fx path (fx_fuse.py): depthwise conv -> BatchNorm ->
activation and squeeze-excitation blocks are found in its graph and replaced
by inference-only fused modules.
"""

from __future__ import annotations

import copy
import logging
import warnings

from torch import nn

from .fx_fuse import DWCONV, SE, FuseReport, Fused, Skipped, dw_detail, fuse_graph
from .activations import gate_name
from .models.fused_layers import Conv2dNormActivation, SqueezeExcitation
from .models.mobilenetv3 import InvertedResidual, MobileNetV3

logger = logging.getLogger("mnv3_kernels.fuse")


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


def _drop_in_report(model: MobileNetV3, source: str) -> FuseReport:
    """The depthwise and SE layers of a drop-in MobileNetV3 that run the mnv3 ops."""
    report = FuseReport(source, "drop-in mnv3_kernels.MobileNetV3")
    for name, m in model.named_modules():
        if isinstance(m, Conv2dNormActivation) and m[0].groups > 1:
            parts = m._parts()
            if parts is not None and parts[0].groups == parts[0].in_channels == parts[0].out_channels:
                report.fused.append(Fused(DWCONV, name, (name,), dw_detail(parts[0], parts[2])))
            else:
                report.skipped.append(Skipped(DWCONV, name, "not a foldable depthwise conv + BatchNorm2d + activation"))
        elif isinstance(m, SqueezeExcitation):
            if m._fold() is not None:
                report.fused.append(Fused(SE, name, (name,), f"1x1 conv FCs, {gate_name(m.scale_activation)} gate"))
            else:
                report.skipped.append(Skipped(SE, name, "FCs, activation or gate not supported"))
    return report


def fuse(model: nn.Module, inplace: bool = False, *, verbose: bool = False) -> nn.Module:
    """Returns `model` with its depthwise conv + BatchNorm + activation and
    squeeze-excitation blocks running the fused mnv3 ops.

    model: any nn.Module.  A torchvision MobileNetV3 or an mnv3_kernels
    MobileNetV3 becomes an mnv3_kernels.MobileNetV3 (same state_dict keys, its
    train/eval mode kept, trainable).  Any other model goes through torch.fx
    (see mnv3_kernels/fx_fuse.py for what is matched); if anything was fused,
    the result is a torch.fx.GraphModule (the model's forward only; its other
    methods are not carried over); in train() mode its fused modules run the
    original modules (trainable, as the drop-in model's layers).  Put the model in eval() before fusing (BatchNorm in training
    mode is not folded) and load its weights first (fused blocks keep the
    original modules as children, so a block's state_dict keys stay unchanged
    when it is all of one module, e.g. an nn.Sequential(conv, bn, act), and
    move under the fused module otherwise).  A model with nothing to fuse is
    returned unchanged, with a warning.
    inplace: False (default) works on a deep copy; True reuses model's modules
    (parameters shared with the result).
    verbose: also print the report.

    The report (a FuseReport: .fused, .skipped with the reason for each block
    left alone, .count("dwconv" | "se"); print() it for a table) is attached as
    `result.mnv3_fuse_report` and logged at INFO on the "mnv3_kernels.fuse" logger.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse(model): model must be a torch.nn.Module, got {type(model).__module__}."
                        f"{type(model).__name__}")
    for name, value in (("inplace", inplace), ("verbose", verbose)):
        if not isinstance(value, bool):
            raise TypeError(f"fuse(model, {name}=...): {name} must be a bool, got {value!r}")
    source = type(model).__name__
    tv = _torchvision_classes()
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, MobileNetV3):
        result, report = model, _drop_in_report(model, source)
    elif tv is not None and isinstance(model, tv["model"]):
        features = nn.Sequential(*[_convert(m, tv) for m in model.features])
        result = MobileNetV3.from_parts(features, model.avgpool, model.classifier, model.training)
        report = _drop_in_report(result, source)
    else:
        result, report = fuse_graph(model)
        if not report.fused:
            warnings.warn(f"mnv3_kernels.fuse(): nothing was fused in {source}; see the reasons in "
                          "result.mnv3_fuse_report", UserWarning, stacklevel=2)
    result.mnv3_fuse_report = report
    logger.info("%s", report)
    if verbose:
        print(report)
    return result
