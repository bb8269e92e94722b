"""SmallCNN of the TRADES MNIST experiments (Zhang et al. 2019, "Theoretically principled
trade-off between robustness and accuracy"): four 3x3 convs (32, 32, pool, 64, 64, pool) with
"VALID" padding, fc 200, dropout, fc 200, fc to the logits."""

from __future__ import annotations

from torch import nn

from robustlab.errors import RobustlabError
from robustlab.models.builders import conv_classifier
from robustlab.models.registry import MODELS
from robustlab.models.shapes import image_shape


@MODELS.register("smallcnn")
def smallcnn(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """TRADES SmallCNN: conv32-conv32-pool-conv64-conv64-pool-fc200-dropout-fc200."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise RobustlabError(f"dropout must be a probability in [0, 1), got {dropout!r}.")
    c = image_shape(input_shape)[0]
    features = [
        nn.Conv2d(c, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
    ]
    model = conv_classifier(features, input_shape, [200, 200], num_classes)
    if dropout > 0:  # after the first hidden layer's ReLU, as in the reference model
        first_relu = len(features) + 3  # features, Flatten, Linear, ReLU
        model.insert(first_relu, nn.Dropout(float(dropout)))
    return model
