from .fused_layers import Conv2dNormActivation, SqueezeExcitation  # noqa: F401
from .mobilenetv3 import (  # noqa: F401
    InvertedResidual,
    InvertedResidualConfig,
    MobileNetV3,
    mobilenet_v3_large,
    mobilenet_v3_small,
)
