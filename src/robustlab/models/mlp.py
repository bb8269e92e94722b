"""Multi-layer perceptron: [Flatten,] (Linear, ReLU) x len(hidden), Linear."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from robustlab.errors import RobustlabError
from robustlab.models.builders import dense_layers
from robustlab.models.registry import MODELS


def _check_hidden(hidden: Sequence[int]) -> list[int]:
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = [hidden]
    if not isinstance(hidden, (list, tuple)) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
    ):
        raise RobustlabError(
            f"hidden must be a sequence of positive layer widths, e.g. (256, 256), got {hidden!r}."
        )
    return list(hidden)


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (256, 256)):
    """Fully connected ReLU network; ``hidden`` gives the hidden widths (empty: linear model)."""
    widths = _check_hidden(hidden)
    flatten: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    return nn.Sequential(*flatten, *dense_layers(math.prod(input_shape), widths, num_classes))
