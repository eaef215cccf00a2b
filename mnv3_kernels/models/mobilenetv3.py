class MobileNetV3: pass
def mobilenet_v3_large(): pass
def mobilenet_v3_small(): pass
