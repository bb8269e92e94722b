"""The operator interface: one class per layer family holds its forward map, its interval rule
and its linear-relaxation rule, the per-operator structure of auto_LiRPA (Xu et al. 2020,
"Automatic perturbation analysis for scalable certified robustness and beyond") in small.

For an operator ``y = f(x_1, ..., x_m)``:

* :meth:`Operator.forward` -- ``f`` on values;
* :meth:`Operator.interval` -- interval bound propagation (Gowal et al. 2018, eq. 6): a box that
  contains ``f(x_1, ..., x_m)`` whenever each ``x_i`` lies in its box;
* :meth:`Operator.backward` -- one step of CROWN's backward pass (Zhang et al. 2018, Theorem
  3.2): for coefficients ``A`` of a linear function of ``y``, coefficients ``A_i`` and a constant
  ``d`` with ``A y >= sum_i A_i x_i + d`` on the input boxes (an equality for affine maps; through
  the linear relaxation of :meth:`Operator.relax` for the others);
* :meth:`Operator.compile` -- add the layer to a graph under construction.

The compiler (:mod:`robustlab.certify.graph`) maps each supported exact ``nn`` type to its
operator class (:data:`robustlab.certify.operators.OPERATORS`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor, nn

if TYPE_CHECKING:
    from robustlab.certify.operators.relu import Relaxation

Shape = tuple[int, ...]
Interval = tuple[Tensor, Tensor]


class Refused(Exception):
    """An operator cannot model this instance of its layer; the message says why in a few words
    (the compiler turns it into an ``UnsupportedLayerError`` naming the layer)."""


class Builder(Protocol):
    """What :meth:`Operator.compile` needs from the graph under construction."""

    #: a parameter of the model (dtype and device of constant weights), or None
    like: Tensor | None

    def shape(self, node: int) -> Shape:
        """Per-sample shape of node ``node``."""

    def add(self, op: Operator, inputs: tuple[int, ...], shape: Shape, name: str) -> int:
        """Append a node; returns its index."""

    def build(self, module: nn.Module, src: int, name: str) -> int:
        """Compile ``module`` applied to node ``src``; returns its output node."""


def flat_bs(a: Tensor, n_lead: int = 2) -> tuple[Tensor, tuple[int, ...]]:
    """Merge the leading ``(B, S)`` dimensions of a backward coefficient tensor."""
    lead = tuple(a.shape[:n_lead])
    return a.reshape(-1, *a.shape[n_lead:]), lead


class Operator(ABC):
    """One operation of the graph (see the module docstring)."""

    kind = "op"
    #: the backward rule needs a relaxation built from the input bounds (:meth:`relax`)
    relaxed = False

    @classmethod
    @abstractmethod
    def compile(cls, module: nn.Module, builder: Builder, src: int, label: str) -> int:
        """Add ``module`` (applied to node ``src``) to ``builder``; returns its output node.
        Raises :class:`Refused` for a configuration the operator cannot model."""

    @abstractmethod
    def forward(self, *xs: Tensor) -> Tensor:
        """The operator on values."""

    def evaluate(self, *xs: Tensor) -> Tensor:
        """The operator when the graph is evaluated on a batch (BatchNorm with batch statistics
        fixes them here); the map itself is :meth:`forward`."""
        return self.forward(*xs)

    @abstractmethod
    def interval(self, *boxes: Interval) -> Interval:
        """IBP: a box of the outputs given one box ``(lower, upper)`` per input."""

    def relax(self, lower: Tensor, upper: Tensor, lower_slope: str) -> Relaxation | None:
        """The linear relaxation on the input box ``[lower, upper]`` (None: the map is affine)."""
        return None

    @abstractmethod
    def backward(self, a: Tensor, relaxation: Any = None) -> tuple[list[Tensor], Tensor | None]:
        """CROWN: coefficients ``a`` (B, S, *out_shape) on the output to coefficients on each
        input and the constant term (B, S) of the linear lower bound, or None for 0."""

    def ibp_depth(self, depth: int) -> int:
        """How far IBP may be from exact after this operator, given its input's: 0 an
        elementwise map of the input, 1 after one mixing linear map, 2 possibly loose."""
        return 2

    def linearize(self, *values: Tensor) -> Operator:
        """The operator's local linearisation at the input values (an affine one is its own)."""
        return self

    def unit_rows(self, ids: Tensor, in_shape: Shape) -> tuple[Tensor, Tensor] | None:
        """``(e_i^T W, e_i^T b)`` for output neurons ``ids`` (B, R) when cheaper than a dense
        backward step of one-hot rows, else None."""
        return None


class AffineOp(Operator):
    """``y = L(x) + b`` for a linear map ``L``.

    IBP (Gowal et al. 2018, eq. 6): centre ``c`` and radius ``r`` map to ``L c + b`` and
    ``|L| r``. CROWN (Zhang et al. 2018): ``A y = (A L) x + A b`` exactly, so the backward step is
    ``A -> A L`` (:meth:`transpose`) plus the constant ``A b`` (:meth:`bias_term`).

    Subclasses implement :meth:`linear` (``L``), :meth:`linear_abs` (``|L|``, the map with
    absolute weights), :meth:`linear_sq` (the map with squared weights, for L2 row norms),
    :meth:`transpose` (``A -> A L`` for coefficients ``A`` of shape ``(B, S, *out_shape)``) and
    :meth:`bias_term` (``A b`` summed over the output, shape ``(B, S)``).
    """

    #: a general (non-diagonal) linear map; elementwise maps and reshapes are not
    mixing = True

    def forward(self, x: Tensor) -> Tensor:
        return self.add_bias(self.linear(x))

    def interval(self, box: Interval) -> Interval:
        lo, hi = box
        c, r = self.forward((hi + lo) / 2), self.linear_abs((hi - lo) / 2)
        return c - r, c + r

    def backward(self, a: Tensor, relaxation: Any = None) -> tuple[list[Tensor], Tensor | None]:
        return [self.transpose(a)], self.bias_term(a)

    def ibp_depth(self, depth: int) -> int:
        return min(depth + 1, 2) if self.mixing else depth

    @abstractmethod
    def linear(self, x: Tensor) -> Tensor:
        """See the class docstring."""

    @abstractmethod
    def linear_abs(self, x: Tensor) -> Tensor:
        """See the class docstring."""

    @abstractmethod
    def linear_sq(self, x: Tensor) -> Tensor:
        """See the class docstring."""

    def add_bias(self, y: Tensor) -> Tensor:
        return y

    @abstractmethod
    def transpose(self, a: Tensor) -> Tensor:
        """See the class docstring."""

    def bias_term(self, a: Tensor) -> Tensor | None:
        return None
