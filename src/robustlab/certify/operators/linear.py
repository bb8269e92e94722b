"""Dense layers: ``nn.Linear``, and :class:`WeightOp`, what it shares with ``nn.Conv2d``.

``y = W x + b``. IBP (Gowal et al. 2018, eq. 6): ``[W c + b -+ |W| r]`` for the input box of
centre ``c`` and radius ``r``. CROWN (Zhang et al. 2018, Theorem 3.2): ``A y = (A W) x + A b``.
"""

from __future__ import annotations

from abc import abstractmethod

import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.certify.operators.base import AffineOp, Builder, Refused, Shape


class WeightOp(AffineOp):
    """Shared parts of ``Linear`` and ``Conv2d``: a weight tensor and an optional bias vector.

    They reference the module's parameters, so bounds are differentiable with respect to the
    weights (certified training).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight = weight
        self.bias = bias

    def linear(self, x: Tensor) -> Tensor:
        return self._apply(x, self.weight)

    def linear_abs(self, x: Tensor) -> Tensor:
        return self._apply(x, self.weight.abs())

    def linear_sq(self, x: Tensor) -> Tensor:
        return self._apply(x, self.weight.square())

    @abstractmethod
    def _apply(self, x: Tensor, weight: Tensor) -> Tensor:
        """The layer's map with ``weight`` in place of its own (no bias)."""


class LinearOp(WeightOp):
    """``nn.Linear`` on a flat input."""

    kind = "Linear"

    @classmethod
    def compile(cls, module: nn.Linear, builder: Builder, src: int, label: str) -> int:
        shape = builder.shape(src)
        if len(shape) != 1 or shape[0] != module.in_features:
            raise Refused(f"expects a flat input of {module.in_features} features, got "
                          f"per-sample shape {shape}")
        return builder.add(cls(module.weight, module.bias), (src,), (module.out_features,), label)

    def _apply(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight)

    def add_bias(self, y: Tensor) -> Tensor:
        return y if self.bias is None else y + self.bias

    def transpose(self, a: Tensor) -> Tensor:
        return a @ self.weight

    def bias_term(self, a: Tensor) -> Tensor | None:
        return None if self.bias is None else a @ self.bias

    def unit_rows(self, ids: Tensor, in_shape: Shape) -> tuple[Tensor, Tensor]:
        """Rows ``ids`` of ``W`` and ``b``: a gather, not a dense product."""
        coef = self.weight[ids]
        bias = self.bias[ids] if self.bias is not None else coef.new_zeros(ids.shape)
        return coef, bias
