"""Reshapes: ``Flatten`` and ``Identity``.

A reshape moves coordinates without mixing them, so its interval is the reshaped input interval
(Gowal et al. 2018, eq. 6 with ``|L| = L``) and CROWN's backward step reshapes the coefficients
back (Zhang et al. 2018, ``A -> A L``); IBP stays exact through it.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from robustlab.certify.operators.base import AffineOp, Builder, Refused, Shape


class ReshapeOp(AffineOp):
    """``Flatten(start_dim=1, end_dim=-1)``: per-sample ``in_shape`` to ``out_shape``."""

    kind = "Flatten"
    mixing = False

    def __init__(self, in_shape: Shape, out_shape: Shape) -> None:
        self.in_shape, self.out_shape = in_shape, out_shape

    @classmethod
    def compile(cls, module: nn.Flatten, builder: Builder, src: int, label: str) -> int:
        if module.start_dim != 1 or module.end_dim != -1:
            raise Refused("only Flatten(start_dim=1, end_dim=-1)")
        shape = builder.shape(src)
        out = (math.prod(shape),)
        return builder.add(cls(shape, out), (src,), out, label)

    def linear(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[: x.dim() - len(self.in_shape)], *self.out_shape)

    linear_abs = linear
    linear_sq = linear

    def transpose(self, a: Tensor) -> Tensor:
        return a.reshape(*a.shape[: a.dim() - len(self.out_shape)], *self.in_shape)


class IdentityOp(AffineOp):
    """``nn.Identity``: ``y = x``. It adds no node to the graph (the graph without it computes
    the same), so its rules are the identity."""

    kind = "Identity"
    mixing = False

    @classmethod
    def compile(cls, module: nn.Identity, builder: Builder, src: int, label: str) -> int:
        return src

    def linear(self, x: Tensor) -> Tensor:
        return x

    linear_abs = linear
    linear_sq = linear
    transpose = linear
