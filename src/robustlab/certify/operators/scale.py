"""Elementwise affine maps ``y = x * scale + shift``: ``Normalize``, ``BatchNorm1d/2d`` (eval
mode, or the clean batch's statistics in training mode) and ReLU activation patterns (the local
linearisation of a network, :meth:`~robustlab.certify.operators.relu.ReLUOp.linearize`).

IBP (Gowal et al. 2018, eq. 6) with a diagonal ``L``: ``[c * scale + shift -+ r * |scale|]``,
exact. CROWN (Zhang et al. 2018): ``A y = (A * scale) x + <A, shift>``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlab.certify.operators.base import AffineOp, Builder, Refused, Shape
from robustlab.models.layers import Normalize


class ScaleOp(AffineOp):
    """Elementwise ``y = x * scale + shift`` (compiled from a ``Normalize`` layer).

    ``scale`` and ``shift`` broadcast against one sample (shared), or have a leading batch
    dimension (``per_sample=True``).
    """

    kind = "Scale"
    mixing = False

    def __init__(self, scale: Tensor, shift: Tensor | None, per_sample: bool = False) -> None:
        self.scale, self.shift, self.per_sample = scale, shift, per_sample

    @classmethod
    def compile(cls, module: Normalize, builder: Builder, src: int, label: str) -> int:
        shape = builder.shape(src)
        view = (-1,) + (1,) * (len(shape) - 1)
        scale = (1.0 / module.std).view(view)
        shift = (-module.mean / module.std).view(view)
        return builder.add(cls(scale, shift), (src,), shape, label)

    def _b(self, t: Tensor) -> Tensor:
        """Broadcast a parameter against (B, S, ...) coefficients."""
        return t.unsqueeze(1) if self.per_sample else t

    def linear(self, x: Tensor) -> Tensor:
        return x * self.scale

    def linear_abs(self, x: Tensor) -> Tensor:
        return x * self.scale.abs()

    def linear_sq(self, x: Tensor) -> Tensor:
        return x * self.scale.square()

    def add_bias(self, y: Tensor) -> Tensor:
        return y if self.shift is None else y + self.shift

    def transpose(self, a: Tensor) -> Tensor:
        return a * self._b(self.scale)

    def bias_term(self, a: Tensor) -> Tensor | None:
        if self.shift is None:
            return None
        return (a * self._b(self.shift)).flatten(2).sum(-1)


class BatchNormOp(ScaleOp):
    """BatchNorm as an elementwise affine map ``scale = w / sqrt(var + eps)``,
    ``shift = b - mean * scale``.

    In eval mode the running statistics define it. In training mode (or without running
    statistics) it uses the batch statistics of the clean inputs, fixed by :meth:`set_batch`
    when the graph is evaluated on the batch, before bounds are propagated, so every bound is a
    bound of one affine map.
    """

    kind = "BatchNorm"

    def __init__(self, module: nn.modules.batchnorm._BatchNorm, shape: Shape) -> None:
        self.module = module
        self.view = (-1,) + (1,) * (len(shape) - 1)
        self.batch_stats = module.training or module.running_mean is None
        if self.batch_stats:
            super().__init__(None, None)  # type: ignore[arg-type]  # set by set_batch
        else:
            super().__init__(*self._affine(module.running_mean, module.running_var))

    @classmethod
    def compile(cls, module: nn.modules.batchnorm._BatchNorm, builder: Builder, src: int,
                label: str) -> int:
        shape = builder.shape(src)
        if (type(module) is nn.BatchNorm2d) != (len(shape) == 3):
            raise Refused(f"per-sample input shape {shape}")
        return builder.add(cls(module, shape), (src,), shape, label)

    def evaluate(self, x: Tensor) -> Tensor:
        if self.batch_stats:
            self.set_batch(x)
        return self.forward(x)

    def _affine(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        m = self.module
        scale = torch.rsqrt(var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        shift = -mean * scale
        if m.bias is not None:
            shift = shift + m.bias
        return scale.view(self.view), shift.view(self.view)

    def set_batch(self, x: Tensor) -> None:
        """Fix the affine map from the batch statistics of the clean inputs ``x`` (N, C, ...)."""
        dims = [0] + list(range(2, x.dim()))
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        self.scale, self.shift = self._affine(mean, var)
