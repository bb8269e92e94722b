"""Residual additions: ``Residual`` (``body(x) + shortcut(x)``, He et al. 2016) and
``LiResNetBlock`` (``x + conv(x)``, Hu et al. 2023).

``y = x_1 + x_2``. IBP (Gowal et al. 2018, eq. 6): ``[l_1 + l_2, u_1 + u_2]``. CROWN (Xu et al.
2020, general graphs): both branches receive ``A`` and meet again where they split.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from robustlab.certify.operators.base import Builder, Interval, Operator, Refused
from robustlab.models.layers import Residual


class AddOp(Operator):
    """The sum of two nodes of the same shape."""

    kind = "Add"

    @classmethod
    def compile(cls, module: Residual, builder: Builder, src: int, label: str) -> int:
        body = builder.build(module.body, src, f"{label}.body")
        skip = src if module.shortcut is None else builder.build(
            module.shortcut, src, f"{label}.shortcut"
        )
        if builder.shape(body) != builder.shape(skip):
            raise Refused("body and shortcut shapes differ")
        return builder.add(cls(), (body, skip), builder.shape(body), label)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return x1 + x2

    def interval(self, box1: Interval, box2: Interval) -> Interval:
        (l1, h1), (l2, h2) = box1, box2
        return l1 + l2, h1 + h2

    def backward(self, a: Tensor, relaxation: Any = None) -> tuple[list[Tensor], None]:
        return [a, a], None
