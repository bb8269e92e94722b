"""Wide residual network WRN-depth-width (Zagoruyko & Komodakis 2016, "Wide residual networks"),
the pre-activation variant used by TRADES / RobustBench: 3x3 stem conv with 16 channels, three
stages of n = (depth - 4) / 6 pre-activation blocks with 16k, 32k, 64k channels (strides 1, 2, 2),
BN-ReLU, global average pooling, linear classifier; He-normal initialisation. WRN-28-10 has
36.5M parameters on CIFAR-10."""

from __future__ import annotations

from torch import nn

from robustlab.errors import RobustlabError
from robustlab.models.builders import conv3x3, kaiming_init_, preact_head, preact_stages
from robustlab.models.registry import MODELS
from robustlab.models.shapes import feature_shape, image_shape
from robustlab.validation import check_int


@MODELS.register("wrn-28-10")
def wide_resnet(input_shape: tuple[int, ...], num_classes: int, depth: int = 28, width: int = 10):
    """WideResNet (Zagoruyko & Komodakis 2016), default depth 28 and widening factor 10."""
    check_int(width, "width")
    check_int(depth, "depth")
    if depth < 10 or (depth - 4) % 6:
        raise RobustlabError(
            f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}."
        )
    n = (depth - 4) // 6
    c = image_shape(input_shape)[0]
    widths = [16 * width, 32 * width, 64 * width]
    body = [conv3x3(c, 16), *preact_stages(16, widths, [n, n, n], [1, 2, 2])]
    feature_shape(nn.Sequential(*body), input_shape)
    return kaiming_init_(nn.Sequential(*body, *preact_head(widths[-1], num_classes)))


MODELS.register(
    "wide-resnet", wide_resnet, help="WideResNet (Zagoruyko & Komodakis 2016), any depth/width."
)
