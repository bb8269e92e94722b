"""CROWN and CROWN-IBP: backward linear bound propagation.

* CROWN-IBP (Zhang et al. 2020, "Towards stable and efficient training of verifiably robust
  neural networks", Section 3.2): intermediate (pre-activation) bounds from IBP, one backward pass
  of CROWN from the specification to the input.
* CROWN (Zhang et al. 2018, "Efficient neural network robustness certification with general
  activation functions"): every pre-activation bound is itself computed by a backward pass, in
  topological order, so later layers use tightened relaxations of earlier ones.

Full CROWN is the expensive case: a pre-activation layer with ``n`` neurons needs ``2n`` backward
rows per input. Only neurons that are *unstable* under the current bounds are refined (a stable
neuron's relaxation is exact whatever its bounds), rows are processed in chunks under a memory
budget (batched back-substitution), and each refined bound is intersected with the IBP bound, so
intermediate bounds are never looser than IBP's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustlab.certify.operators import Operator
from robustlab.certify.propagation import (
    BoundState,
    backward,
    check_spec,
    forward_intervals,
    setup,
)
from robustlab.threat import Threat
from robustlab.validation import check_int

#: default cap on the number of elements of one chunk of backward coefficients (B x rows x size)
MAX_ELEMENTS = 2**24


def crown_ibp(state: BoundState, spec: Tensor) -> Tensor:
    """CROWN-IBP lower bounds (B, S) of ``spec @ logits`` on a prepared state."""
    forward_intervals(state)
    return backward(state, state.graph.output, spec)


def crown(state: BoundState, spec: Tensor, max_elements: int = MAX_ELEMENTS) -> Tensor:
    """Full CROWN lower bounds (B, S) of ``spec @ logits`` on a prepared state."""
    check_int(max_elements, "max_elements")
    forward_intervals(state, refine=lambda k: refine_unstable(state, k, max_elements))
    return backward(state, state.graph.output, spec)


def refine_unstable(state: BoundState, k: int, max_elements: int = MAX_ELEMENTS) -> None:
    """Tighten the interval of node ``k`` by CROWN on its unstable neurons, in chunks.

    Per input, the unstable neurons are gathered (padded to the largest count with indices of
    other neurons, whose CROWN bounds are just as sound) and bounded from below and above at once:
    rows ``+e_i`` and ``-e_i`` of one backward pass. For a Linear or Conv2d node the first step of
    that pass -- one-hot rows times the weights -- is a gather of weight rows or kernels, not a
    dense product (:func:`unit_rows_through`).
    """
    lo, hi = state.intervals[k]
    batch = lo.shape[0]
    unstable = ((lo < 0) & (hi > 0)).flatten(1)
    count = int(unstable.sum(1).max()) if unstable.numel() else 0
    if count == 0:
        return
    index = unstable.to(lo.dtype).topk(count, dim=1).indices  # (B, count), unstable first
    node = state.graph.nodes[k]
    widest = max(math.prod(n.shape) for n in state.graph.nodes[: k + 1])
    chunk = max(1, max_elements // (batch * 2 * widest))
    lo_flat, hi_flat = lo.flatten(1), hi.flatten(1)
    for start in range(0, count, chunk):
        ids = index[:, start : start + chunk]
        rows = ids.shape[1]
        first = unit_rows_through(node.op, ids, state.graph.nodes[node.inputs[0]].shape)
        if first is None:
            unit = torch.zeros(batch, rows, lo_flat.shape[1], dtype=lo.dtype, device=lo.device)
            unit.scatter_(2, ids.unsqueeze(-1), 1.0)
            coef = torch.cat([unit, -unit], 1).reshape(batch, 2 * rows, *lo.shape[1:])
            bound = backward(state, k, coef)
        else:
            coef, bias = first
            bound = backward(state, node.inputs[0], torch.cat([coef, -coef], 1))
            bound = bound + torch.cat([bias, -bias], 1)
        lo_flat = lo_flat.scatter_reduce(1, ids, bound[:, :rows], "amax")
        hi_flat = hi_flat.scatter_reduce(1, ids, -bound[:, rows:], "amin")
    state.intervals[k] = (lo_flat.view_as(lo), hi_flat.view_as(hi))


def unit_rows_through(op: Operator, ids: Tensor, in_shape: tuple[int, ...]
                      ) -> tuple[Tensor, Tensor] | None:
    """``(e_i^T W, e_i^T b)`` for the output neurons ``ids`` (B, R) of a Linear or Conv2d
    operation: coefficients (B, R, *in_shape) on its input and the bias (B, R). ``None`` for
    other operations (:meth:`~robustlab.certify.operators.Operator.unit_rows`)."""
    return op.unit_rows(ids, in_shape)


def crown_ibp_bounds(
    model: nn.Module,
    x: Tensor,
    threat: Threat | str,
    spec: Tensor | None = None,
    lower_slope: str = "adaptive",
) -> Tensor:
    """CROWN-IBP lower bounds (N, S) of ``C f(x')`` over the threat's ball around ``x``."""
    state = setup(model, x, threat, lower_slope)
    return crown_ibp(state, check_spec(spec, state))


def crown_bounds(
    model: nn.Module,
    x: Tensor,
    threat: Threat | str,
    spec: Tensor | None = None,
    lower_slope: str = "adaptive",
    max_elements: int = MAX_ELEMENTS,
) -> Tensor:
    """Full-CROWN lower bounds (N, S) of ``C f(x')`` over the threat's ball around ``x``."""
    state = setup(model, x, threat, lower_slope)
    return crown(state, check_spec(spec, state), max_elements)
