"""CNN7 of Shi et al. 2021, "Fast certified robust training with short warmup" (the CNN-7 of the
CROWN-IBP line of work): conv(w)-conv(w)-conv(2w, stride 2)-conv(2w)-conv(2w)-fc(linear_size),
3x3 convolutions with padding 1, every layer followed by BatchNorm and ReLU, then a linear layer
to the logits; w = ``width`` (64 in the paper) and ``linear_size`` = 512.
"""

from __future__ import annotations

from torch import nn

from robustlab.models.builders import conv_classifier
from robustlab.models.registry import MODELS
from robustlab.models.shapes import image_shape
from robustlab.validation import check_int


@MODELS.register("cnn7")
def cnn7(
    input_shape: tuple[int, ...], num_classes: int, width: int = 64, linear_size: int = 512
) -> nn.Sequential:
    """CNN7 (Shi et al. 2021): 5 conv + 1 fc, each with BatchNorm+ReLU; width and fc size set."""
    check_int(width, "width")
    check_int(linear_size, "linear_size")
    c = image_shape(input_shape)[0]
    features: list[nn.Module] = []
    for out, stride in [(width, 1), (width, 1), (2 * width, 2), (2 * width, 1), (2 * width, 1)]:
        features += [nn.Conv2d(c, out, 3, stride=stride, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        c = out
    return conv_classifier(features, input_shape, [linear_size], num_classes, batchnorm=True)
