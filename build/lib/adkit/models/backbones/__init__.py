"""ImageNet backbones shared by the methods: ResNet / WideResNet and EfficientNet-Lite, and the
frozen multi-scale encoder built from either (``encoders.build_encoder``)."""
