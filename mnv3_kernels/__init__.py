"""mnv3_kernels: fused depthwise-conv + BatchNorm + activation and
squeeze-excitation ops (CUDA, Triton, CPU) and a drop-in MobileNetV3 that uses them."""

from . import ops  # noqa: F401  (defines the mnv3 ops first)
from .backends import Backend, set_backend, use_backend
from .freeze import FrozenCudaModel, FrozenMobileNetV3, FrozenModel, freeze
from .functional import dwconv_bias_act, se_excite_scale
from .fuse import fuse
from .fx_fuse import FuseReport
from .models import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small
from .reference import fold_batchnorm

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "MobileNetV3",
    "dwconv_bias_act",
    "fold_batchnorm",
    "FrozenMobileNetV3",
    "FrozenModel",
    "FuseReport",
    "freeze",
    "FrozenCudaModel",
    "fuse",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "se_excite_scale",
    "set_backend",
    "use_backend",
]
