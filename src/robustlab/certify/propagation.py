"""The bound-propagation engine shared by IBP and CROWN.

Two passes over a :class:`~robustlab.certify.graph.Graph`:

* :func:`forward_intervals` -- interval bound propagation (Gowal et al. 2018, eq. 6): an affine
  layer maps centre ``c`` and radius ``r`` to ``W c + b`` and ``|W| r``; a ReLU maps the box
  ends; a residual addition adds them. For L2 inputs the layers up to the first mixing layer are
  bounded exactly on the ball (``W x +- eps ||W_i||_2``, the row norms computed as ``W**2``
  applied to the squared diagonal scales) and intersected with the box bounds. A ``refine``
  hook may tighten a node's interval before later nodes use it (full CROWN).
* :func:`backward` -- linear bound propagation (CROWN, Zhang et al. 2018, Theorem 3.2; its
  general-graph form in Xu et al. 2020, auto_LiRPA): coefficients ``A`` of a linear function of a
  node are pushed to the node's inputs; through an affine layer ``A -> A W`` plus the bias term
  ``A b``; through a ReLU with pre-activation bounds ``[l, u]`` the positive part of ``A`` takes
  the lower relaxation ``relu(z) >= alpha z`` and the negative part the upper relaxation
  ``relu(z) <= u (z - l) / (u - l)``; at a residual addition both branches receive ``A`` and meet
  again where they split. At the input (or at ``stop`` nodes, against their intervals) the
  linear function is minimised in closed form.

Only lower bounds are computed: an upper bound of ``A f`` is ``-lower(-A f)``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from robustlab.certify.graph import (
    AddOp,
    AffineOp,
    Graph,
    ReLUOp,
    ScaleOp,
    compile_model,
    verify_graph,
)
from robustlab.certify.spec import InputSet, as_bound_threat, interval_lower
from robustlab.errors import RobustlabError
from robustlab.threat import Threat
from robustlab.validation import check_inputs

Interval = tuple[Tensor, Tensor]

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


@dataclass
class BoundState:
    """A compiled model, the input set, and the intervals and relaxations computed so far."""

    graph: Graph
    inputs: InputSet
    lower_slope: str = "adaptive"
    intervals: list[Interval | None] = field(default_factory=list)
    _relaxations: dict[int, Relaxation] = field(default_factory=dict)

    def relaxation(self, k: int) -> Relaxation:
        """The relaxation of ReLU node ``k`` from its input's (final) interval; cached."""
        if k not in self._relaxations:
            lo, hi = self.intervals[self.graph.nodes[k].inputs[0]]
            self._relaxations[k] = relu_relaxation(lo, hi, self.lower_slope)
        return self._relaxations[k]


def setup(
    model: nn.Module,
    x: Tensor,
    threat: Threat | str,
    lower_slope: str = "adaptive",
    *,
    logits: Tensor | None = None,
) -> BoundState:
    """Validate the inputs, compile ``model``, fix BatchNorm batch statistics from ``x`` and
    check that the graph computes the model on ``x`` (see
    :func:`~robustlab.certify.graph.verify_graph`; ``logits`` is ``model(x)`` when the caller
    has it already).

    Every bound method (IBP, CROWN-IBP, CROWN, the tightness metric, certified training) starts
    here, so no bound is computed for a graph that was not checked against the model on the very
    batch it bounds.
    """
    check_inputs(x)
    t = as_bound_threat(threat)
    if lower_slope not in LOWER_SLOPES:
        raise RobustlabError(
            f"Unknown ReLU lower slope {lower_slope!r}; known: {', '.join(LOWER_SLOPES)}."
        )
    graph = compile_model(model, tuple(x.shape[1:]))
    if graph.uses_batch_statistics():
        out = graph.forward(x)  # fixes the batch statistics, differentiably in the weights
    else:
        with torch.no_grad():
            out = graph.forward(x)
    verify_graph(graph, model, x, out=out, logits=logits)
    return BoundState(graph, InputSet(x, t), lower_slope)


def check_spec(spec: Tensor | None, state: BoundState) -> Tensor:
    """A specification ``C`` as (B, S, K); ``None`` means the identity (bounds on each logit)."""
    n = state.inputs.x.shape[0]
    k = state.graph.nodes[-1].shape[0]
    x = state.inputs.x
    if spec is None:
        return torch.eye(k, dtype=x.dtype, device=x.device).expand(n, k, k)
    if not isinstance(spec, Tensor) or spec.dim() not in (2, 3) or spec.shape[-1] != k or (
        spec.dim() == 3 and spec.shape[0] != n
    ):
        shape = tuple(spec.shape) if isinstance(spec, Tensor) else type(spec).__name__
        raise RobustlabError(
            f"the specification C must have shape (S, {k}) or ({n}, S, {k}) for {n} inputs and "
            f"{k} logits, got {shape}."
        )
    spec = spec.to(dtype=x.dtype, device=x.device)
    return spec.expand(n, *spec.shape) if spec.dim() == 2 else spec


def refinable(graph: Graph) -> list[bool]:
    """Nodes whose IBP interval may be loose: after a ReLU, a residual addition, or two mixing
    (non-elementwise) layers. Before that, IBP is exact coordinate-wise (Linf) or the ball bound
    is (L2)."""
    depth = [0] * len(graph.nodes)  # 0: elementwise map of the input, 1: one mixing layer, 2: more
    for k, node in enumerate(graph.nodes[1:], 1):
        src = depth[node.inputs[0]]
        if isinstance(node.op, (ReLUOp, AddOp)):
            depth[k] = 2
        elif isinstance(node.op, AffineOp) and node.op.mixing:
            depth[k] = 1 if src == 0 else 2
        else:
            depth[k] = src
    return [d == 2 for d in depth]


def forward_intervals(state: BoundState, refine: Callable[[int], None] | None = None) -> None:
    """Fill ``state.intervals`` with an interval for every node (see the module docstring).

    ``refine(k)`` is called on every node that feeds a ReLU and whose IBP interval may be loose,
    after its interval is computed; it may replace ``state.intervals[k]`` with a tighter one.
    """
    graph, inp = state.graph, state.inputs
    n = len(graph.nodes)
    iv: list[Interval | None] = [None] * n
    iv[0] = (inp.lower, inp.upper)
    state.intervals = iv
    state._relaxations.clear()
    # L2: (value at x, squared row norms, mixed yet) while the map from the input is affine with
    # at most one mixing layer.
    ball: list[tuple[Tensor, Tensor, bool] | None] = [None] * n
    if inp.norm == "l2":
        ball[0] = (inp.x, torch.ones_like(inp.x), False)
    loose = refinable(graph) if refine is not None else None
    for k, node in enumerate(graph.nodes[1:], 1):
        op = node.op
        if isinstance(op, ReLUOp):
            lo, hi = iv[node.inputs[0]]
            iv[k] = (lo.clamp_min(0), hi.clamp_min(0))
        elif isinstance(op, AddOp):
            (l1, h1), (l2, h2) = iv[node.inputs[0]], iv[node.inputs[1]]
            iv[k] = (l1 + l2, h1 + h2)
        else:
            lo, hi = iv[node.inputs[0]]
            c, r = op.forward((hi + lo) / 2), op.linear_abs((hi - lo) / 2)
            iv[k] = (c - r, c + r)
            prev = ball[node.inputs[0]]
            if prev is not None and not (op.mixing and prev[2]):
                value, rows, mixed = op.forward(prev[0]), op.linear_sq(prev[1]), prev[2] or op.mixing
                ball[k] = (value, rows, mixed)
                rad = inp.eps * rows.clamp_min(0).sqrt()
                lo, hi = iv[k]
                iv[k] = (torch.maximum(lo, value - rad), torch.minimum(hi, value + rad))
        if refine is not None and loose[k] and graph.feeds_relu(k):
            refine(k)


def backward(
    state: BoundState, start: int, a: Tensor, stop: Collection[int] = ()
) -> Tensor:
    """Lower bound (B, S) of ``<a_s, v_start>`` over the input set, for coefficients ``a`` of
    shape (B, S, *shape of node ``start``).

    The linear function is propagated back to the input; at nodes in ``stop`` it is bounded
    directly on their interval instead (IBP's elision of the last layers).
    """
    graph = state.graph
    pending: dict[int, Tensor] = {start: a}
    total = a.new_zeros(a.shape[:2])

    def push(k: int, coef: Tensor) -> None:
        pending[k] = pending[k] + coef if k in pending else coef

    for k in range(start, -1, -1):
        coef = pending.pop(k, None)
        if coef is None:
            continue
        node = graph.nodes[k]
        if k == 0:
            total = total + state.inputs.concretize(coef)
        elif k in stop:
            lo, hi = state.intervals[k]
            total = total + interval_lower(coef, lo, hi)
        elif isinstance(node.op, ReLUOp):
            rel = state.relaxation(k)
            pos, neg = coef.clamp_min(0), coef.clamp_max(0)
            push(node.inputs[0], pos * rel.lower_slope.unsqueeze(1)
                 + neg * rel.upper_slope.unsqueeze(1))
            total = total + torch.einsum(
                "bsn,bn->bs", neg.flatten(2), rel.upper_intercept.flatten(1)
            )
        elif isinstance(node.op, AddOp):
            push(node.inputs[0], coef)
            push(node.inputs[1], coef)
        else:
            push(node.inputs[0], node.op.transpose(coef))
            bias = node.op.bias_term(coef)
            if bias is not None:
                total = total + bias
    return total


def linearized(graph: Graph, x: Tensor) -> Graph:
    """The graph with every ReLU replaced by its activation pattern at ``x`` (a per-sample 0/1
    elementwise scale): the local linearisation of the network at ``x``."""
    values = graph.forward(x, keep=True)
    nodes = list(graph.nodes)
    for k in graph.relu_nodes():
        node = nodes[k]
        pattern = (values[node.inputs[0]] > 0).to(x.dtype)
        nodes[k] = type(node)(ScaleOp(pattern, None, per_sample=True), node.inputs, node.shape,
                              node.name)
    return Graph(nodes)
