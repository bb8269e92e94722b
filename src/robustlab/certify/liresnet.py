"""The LiResNet block (Hu et al. 2023, "Unlocking deterministic robustness certification on
ImageNet", eq. 4): ``x + conv(x)`` with one same-padded, stride-1 convolution.

It is a :class:`~robustlab.models.layers.Residual` that only fixes the construction (identity
shortcut, small initial kernel) and keeps ``Residual.forward``; the graph compiler lists it by
exact type next to ``Residual``, and :mod:`robustlab.certify.lipschitz` bounds it as the single
kernel ``W + I``.
"""

from __future__ import annotations

from torch import nn

from robustlab.errors import RobustlabError
from robustlab.models.layers import Residual
from robustlab.validation import check_int


class LiResNetBlock(Residual):
    """LiResNet block ``x + conv(x)`` (Hu et al. 2023, eq. 4): one same-padded, stride-1
    convolution with an identity shortcut, whose Lipschitz bound is that of the single kernel
    ``W + I`` (see :func:`~robustlab.certify.lipschitz.conv_spectral_bound`). Follow it with a
    ReLU."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        check_int(channels, "channels")
        if kernel_size % 2 != 1:
            raise RobustlabError(f"kernel_size must be odd, got {kernel_size!r}.")
        conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        nn.init.normal_(conv.weight, std=1.0 / (channels * kernel_size**2))
        nn.init.zeros_(conv.bias)
        super().__init__(conv)
