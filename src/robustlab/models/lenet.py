"""LeNet-5 style CNN (LeCun et al. 1998, "Gradient-based learning applied to document
recognition") with modern ReLU and max-pooling: conv 5x5x6 (padding 2), pool 2, conv 5x5x16,
pool 2, fc 120, fc 84, fc to the logits. At 28x28 the second conv sees 14x14 maps, as the
original's 32x32 input without padding does."""

from __future__ import annotations

from torch import nn

from robustlab.models.builders import conv_classifier
from robustlab.models.registry import MODELS
from robustlab.models.shapes import image_shape


@MODELS.register("lenet")
def lenet(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """LeNet-5 style: conv6-pool-conv16-pool-fc120-fc84, ReLU activations."""
    c = image_shape(input_shape)[0]
    features = [
        nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
    ]
    return conv_classifier(features, input_shape, [120, 84], num_classes)
