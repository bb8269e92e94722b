"""``nn.ReLU``.

IBP (Gowal et al. 2018, eq. 6): ``[relu(l), relu(u)]``, monotone. CROWN (Zhang et al. 2018,
Section 3.2): on a pre-activation box ``[l, u]`` the triangle relaxation
``alpha z <= relu(z) <= u (z - l) / (u - l)`` for an unstable neuron (``l < 0 < u``), exact on a
stable one; a backward step sends the positive part of ``A`` through the lower line and the
negative part through the upper one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustlab.certify.operators.base import Builder, Interval, Operator
from robustlab.certify.operators.scale import ScaleOp
from robustlab.errors import RobustlabError

#: lower-relaxation slopes of an unstable ReLU: CROWN's adaptive choice (1 if u > -l else 0,
#: Zhang et al. 2018), constant 0 or 1, or the slope of the upper line (Fast-Lin / DeepZ style).
LOWER_SLOPES = ("adaptive", "zero", "one", "parallel")


@dataclass
class Relaxation:
    """Linear bounds ``lower_slope * z <= relu(z) <= upper_slope * z + upper_intercept``."""

    lower_slope: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor


def relu_relaxation(lower: Tensor, upper: Tensor, lower_slope: str = "adaptive") -> Relaxation:
    """The triangle relaxation of ``relu`` on ``[lower, upper]`` (exact on stable neurons)."""
    if lower_slope not in LOWER_SLOPES:
        raise RobustlabError(
            f"Unknown ReLU lower slope {lower_slope!r}; known: {', '.join(LOWER_SLOPES)}."
        )
    unstable = (lower < 0) & (upper > 0)
    active = (lower >= 0).to(lower.dtype)
    slope = upper / (upper - lower).clamp_min(1e-12)
    up = torch.where(unstable, slope, active)
    intercept = torch.where(unstable, -slope * lower, torch.zeros_like(lower))
    if lower_slope == "adaptive":
        alpha = (upper > -lower).to(lower.dtype)
    elif lower_slope == "zero":
        alpha = torch.zeros_like(lower)
    elif lower_slope == "one":
        alpha = torch.ones_like(lower)
    else:
        alpha = slope
    low = torch.where(unstable, alpha, active)
    return Relaxation(low, up, intercept)


class ReLUOp(Operator):
    """``y = max(x, 0)``."""

    kind = "ReLU"
    relaxed = True

    @classmethod
    def compile(cls, module: nn.ReLU, builder: Builder, src: int, label: str) -> int:
        return builder.add(cls(), (src,), builder.shape(src), label)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def interval(self, box: Interval) -> Interval:
        lo, hi = box
        return lo.clamp_min(0), hi.clamp_min(0)

    def relax(self, lower: Tensor, upper: Tensor, lower_slope: str) -> Relaxation:
        return relu_relaxation(lower, upper, lower_slope)

    def backward(self, a: Tensor, relaxation: Relaxation) -> tuple[list[Tensor], Tensor]:
        pos, neg = a.clamp_min(0), a.clamp_max(0)
        coef = (pos * relaxation.lower_slope.unsqueeze(1)
                + neg * relaxation.upper_slope.unsqueeze(1))
        const = torch.einsum("bsn,bn->bs", neg.flatten(2), relaxation.upper_intercept.flatten(1))
        return [coef], const

    def linearize(self, x: Tensor) -> ScaleOp:
        """The activation pattern at ``x``: a per-sample 0/1 elementwise scale."""
        return ScaleOp((x > 0).to(x.dtype), None, per_sample=True)
