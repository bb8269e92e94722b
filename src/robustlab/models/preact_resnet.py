"""PreAct-ResNet18 (He et al. 2016, "Identity mappings in deep residual networks"), the CIFAR
variant used in adversarial-training work (e.g. Rice et al. 2020): 3x3 stem conv, four stages of
two pre-activation blocks (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2), BN-ReLU, global average
pooling, linear classifier; w = ``width`` = 64 in the paper."""

from __future__ import annotations

from torch import nn

from robustlab.models.builders import conv3x3, preact_head, preact_stages
from robustlab.models.registry import MODELS
from robustlab.models.shapes import feature_shape, image_shape
from robustlab.validation import check_int


@MODELS.register("preact-resnet18")
def preact_resnet18(input_shape: tuple[int, ...], num_classes: int, width: int = 64):
    """PreAct-ResNet18 (He et al. 2016); ``width`` sets the first stage's channels."""
    check_int(width, "width")
    c = image_shape(input_shape)[0]
    widths = [width, 2 * width, 4 * width, 8 * width]
    body = [conv3x3(c, width), *preact_stages(width, widths, [2, 2, 2, 2], [1, 2, 2, 2])]
    feature_shape(nn.Sequential(*body), input_shape)
    return nn.Sequential(*body, *preact_head(widths[-1], num_classes))
