"""A user's own module, as `edgeconv import efflite_user:lite0` sees it: PyPI's EfficientNet-Lite model code
(`efficientnet-lite-pytorch`, in the `pretrained` extra). Used by benchmarks/imagenet_lite0.py."""

from __future__ import annotations


def lite0(num_classes: int = 1000):
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
