"""The small / medium / large CNNs of Gowal et al. 2018, "On the effectiveness of interval bound
propagation for training verifiably robust models" (appendix, architectures table), as in the
authors' reference code: ReLU after every layer, no pooling, "VALID" padding for small and
medium and "SAME" padding for large, then a linear layer to the logits.

    small:  conv 16 4x4+2, conv 32 4x4+1, fc 100
    medium: conv 32 3x3+1, conv 32 4x4+2, conv 64 3x3+1, conv 64 4x4+2, fc 512, fc 512
    large:  conv 64 3x3+1, conv 64 3x3+1, conv 128 3x3+2, conv 128 3x3+1, conv 128 3x3+1, fc 512
"""

from __future__ import annotations

from torch import nn

from robustlab.models.builders import conv_classifier
from robustlab.models.registry import MODELS
from robustlab.models.shapes import image_shape

# (out_channels, kernel, stride) per conv layer, the hidden fc widths, "SAME" padding or not.
_SPECS = {
    "small": ([(16, 4, 2), (32, 4, 1)], [100], False),
    "medium": ([(32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)], [512, 512], False),
    "large": ([(64, 3, 1), (64, 3, 1), (128, 3, 2), (128, 3, 1), (128, 3, 1)], [512], True),
}


def _ibp_cnn(size: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    convs, hidden, same = _SPECS[size]
    c = image_shape(input_shape)[0]
    features: list[nn.Module] = []
    for out, k, s in convs:
        # TF "SAME" with odd k and stride s gives ceil(H / s) outputs, as padding (k - 1) / 2 does.
        features += [nn.Conv2d(c, out, k, stride=s, padding=(k - 1) // 2 if same else 0), nn.ReLU()]
        c = out
    return conv_classifier(features, input_shape, hidden, num_classes)


@MODELS.register("cnn-small")
def cnn_small(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """IBP-paper small CNN (Gowal et al. 2018): conv16 4x4/2, conv32 4x4/1, fc100."""
    return _ibp_cnn("small", input_shape, num_classes)


@MODELS.register("cnn-medium")
def cnn_medium(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """IBP-paper medium CNN (Gowal et al. 2018): 4 convs (32, 32/2, 64, 64/2), fc512, fc512."""
    return _ibp_cnn("medium", input_shape, num_classes)


@MODELS.register("cnn-large")
def cnn_large(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """IBP-paper large CNN (Gowal et al. 2018): 5 convs (64, 64, 128/2, 128, 128), fc512."""
    return _ibp_cnn("large", input_shape, num_classes)
