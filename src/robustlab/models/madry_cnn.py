"""The MNIST-challenge CNN of Madry et al. 2018, "Towards deep learning models resistant to
adversarial attacks": conv 5x5x32 ("SAME"), ReLU, maxpool 2, conv 5x5x64 ("SAME"), ReLU,
maxpool 2, fc 1024, ReLU, fc to the logits (3,274,634 parameters on MNIST)."""

from __future__ import annotations

from torch import nn

from robustlab.models.builders import conv_classifier
from robustlab.models.registry import MODELS
from robustlab.models.shapes import image_shape


@MODELS.register("madry-cnn")
def madry_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Madry et al. 2018 MNIST CNN: conv32-pool-conv64-pool-fc1024."""
    c = image_shape(input_shape)[0]
    features = [
        nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
    ]
    return conv_classifier(features, input_shape, [1024], num_classes)
