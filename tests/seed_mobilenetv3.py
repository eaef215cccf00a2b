from mnv3_kernels.seed_mobilenetv3 import *  # noqa: F401,F403  MobileNetV3_Large, SqueezeExcitation, bottleneck (moved into the package: the bench times it)
