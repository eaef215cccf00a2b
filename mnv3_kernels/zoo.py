"""The models `python -m mnv3_kernels.bench --models` times: MobileNetV3 and its family,
by name, each with random weights (nothing is downloaded).

One table, MODELS: what differs between the models (where they come from, their
input channels) lives in its entries, so the bench runs every model through the
same code.  torchvision and timm are imported when a model is built, not here: a
missing package makes that model unavailable (the bench lists it with the
reason), not the bench.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from mnv3_kernels.testing import randomize_batchnorm, randomize_classifier


class Unavailable(Exception):
    """A model or variant that cannot run here; the message says why."""


@dataclass(frozen=True)
class ZooModel:
    description: str
    make: Callable[[], nn.Module]  # the model with random weights (its own init), fp32; may raise Unavailable
    in_channels: int = 3


def _module(name: str, package: str):
    """Imports `name` when a model needs it: a missing package is a reason, not a crash."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise Unavailable(f"{package} is not installed (pip install {package})") from None


def _torchvision(arch: str, **kwargs) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        return getattr(_module("torchvision.models", "torchvision"), arch)(weights=None, **kwargs)

    return make


def _lraspp() -> nn.Module:
    segmentation = _module("torchvision.models.segmentation", "torchvision")
    return segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)


def _timm(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        return _module("timm", "timm").create_model(name, pretrained=False)

    return make


def _seed_large() -> nn.Module:
    from mnv3_kernels.seed_mobilenetv3 import MobileNetV3_Large

    return MobileNetV3_Large(num_classes=1000, in_channels=3)


# name -> entry, in --help's order.  large and small are the bench's default (mnv3's
# drop-in path: fuse() makes them an mnv3_kernels.MobileNetV3, freeze() takes them);
# the others go through fuse()'s torch.fx path.
MODELS: dict[str, ZooModel] = {
    "large": ZooModel("torchvision mobilenet_v3_large", _torchvision("mobilenet_v3_large")),
    "small": ZooModel("torchvision mobilenet_v3_small", _torchvision("mobilenet_v3_small")),
    "timm_large": ZooModel("timm mobilenetv3_large_100", _timm("mobilenetv3_large_100")),
    "timm_small": ZooModel("timm mobilenetv3_small_100", _timm("mobilenetv3_small_100")),
    "lcnet": ZooModel("timm lcnet_100 (PP-LCNet: depthwise blocks, SE in the last stage)", _timm("lcnet_100")),
    "mobilenet_v2": ZooModel("torchvision mobilenet_v2 (no SE)", _torchvision("mobilenet_v2")),
    "mnasnet": ZooModel("torchvision mnasnet1_0 (no SE)", _torchvision("mnasnet1_0")),
    "lraspp": ZooModel("torchvision lraspp_mobilenet_v3_large, 21 classes (segmentation: its 'out' map is "
                       "compared and timed)", _lraspp),
    "seed_large": ZooModel("the seed blog's hand-written MobileNetV3_Large (mnv3_kernels/seed_mobilenetv3.py; "
                           "its x.squeeze() head fails at batch 1)", _seed_large),
}
DEFAULT_MODELS = ["large", "small"]


def build(name: str, seed: int) -> nn.Module:
    """MODELS[name] in eval mode, fp32, on CPU, its weights from `seed` (the same
    model every run), with random BatchNorm statistics and affine parameters (so
    folding is not a no-op) and 1/sqrt(fan_in) Linear heads (logits large enough
    that a difference means something).  Raises Unavailable (e.g. timm is not
    installed) and KeyError for an unknown name."""
    if name not in MODELS:
        raise KeyError(f"build(name): unknown model {name!r}; the zoo has {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):  # the constructors' own init draws from the global generator
        torch.manual_seed(seed)
        model = MODELS[name].make()
    gen = torch.Generator().manual_seed(seed)
    randomize_batchnorm(model, gen)
    randomize_classifier(model, gen)
    return model.float().eval()


def output_tensor(out) -> torch.Tensor:
    """The tensor a model's output is compared and timed by: the output itself, or
    the "out" entry of a dict (torchvision's segmentation models return
    OrderedDict(out=..., [aux=...]))."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and isinstance(out.get("out"), torch.Tensor):
        return out["out"]
    keys = f" with keys {list(out)}" if isinstance(out, Mapping) else ""
    raise TypeError(f"output_tensor(out): expected a tensor or a dict with an 'out' tensor, got "
                    f"{type(out).__name__}{keys}")
