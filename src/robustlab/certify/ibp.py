"""Interval bound propagation (IBP; Gowal et al. 2018, "On the effectiveness of interval bound
propagation for training verifiably robust models", eqs. 6-8).

Boxes are pushed through the network layer by layer (see
:func:`~robustlab.certify.propagation.forward_intervals`); bounds on the specification ``C z``
elide the layers after the last ReLU: ``C`` is multiplied into them and the product is bounded on
the box of the last ReLU's output (Gowal et al. 2018, Section 3, "elision of the last layer"),
which is never looser than bounding each logit separately.
"""

from __future__ import annotations

from torch import Tensor, nn

from robustlab.certify.propagation import BoundState, backward, check_spec, forward_intervals, setup
from robustlab.threat import Threat


def ibp(state: BoundState, spec: Tensor) -> Tensor:
    """Lower bounds (B, S) of ``spec @ logits`` by IBP with elision, on a prepared state."""
    forward_intervals(state)
    return elided(state, spec)


def elided(state: BoundState, spec: Tensor) -> Tensor:
    """Bound ``spec @ logits`` on the intervals already in ``state``, eliding the affine tail."""
    return backward(state, state.graph.output, spec, stop=set(state.graph.relaxed_nodes()))


def ibp_bounds(model: nn.Module, x: Tensor, threat: Threat | str, spec: Tensor | None = None
               ) -> Tensor:
    """Lower bounds (N, S) of ``C f(x')`` over the threat's ball around ``x`` (in [0, 1]).

    ``spec`` is ``C`` of shape (S, K) or (N, S, K); ``None`` bounds each logit. Upper bounds are
    ``-ibp_bounds(model, x, threat, -C)``.
    """
    state = setup(model, x, threat)
    return ibp(state, check_spec(spec, state))


def interval_bounds(model: nn.Module, x: Tensor, threat: Threat | str) -> tuple[Tensor, Tensor]:
    """The plain IBP box ``(lower, upper)`` of the logits, each (N, K)."""
    state = setup(model, x, threat)
    forward_intervals(state)
    return state.intervals[-1]
