"""The bound-propagation engine shared by IBP and CROWN.

Two passes over a :class:`~robustlab.certify.graph.Graph`:

* :func:`forward_intervals` -- interval bound propagation (Gowal et al. 2018, eq. 6): each
  operator's :meth:`~robustlab.certify.operators.Operator.interval` rule (an affine layer maps
  centre ``c`` and radius ``r`` to ``W c + b`` and ``|W| r``; a ReLU maps the box ends; a
  residual addition adds them). For L2 inputs the layers up to the first mixing layer are
  bounded exactly on the ball (``W x +- eps ||W_i||_2``, the row norms computed as ``W**2``
  applied to the squared diagonal scales) and intersected with the box bounds. A ``refine``
  hook may tighten a node's interval before later nodes use it (full CROWN).
* :func:`backward` -- linear bound propagation (CROWN, Zhang et al. 2018, Theorem 3.2; its
  general-graph form in Xu et al. 2020, auto_LiRPA): coefficients ``A`` of a linear function of a
  node are pushed to the node's inputs by each operator's
  :meth:`~robustlab.certify.operators.Operator.backward` rule; through an affine layer ``A -> A W`` plus the bias term
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

from robustlab.certify.graph import Graph, compile_model, verify_graph
from robustlab.certify.operators import LOWER_SLOPES, AffineOp, Interval, Relaxation
from robustlab.certify.operators import relu_relaxation as relu_relaxation  # re-exported
from robustlab.certify.spec import InputSet, as_bound_threat, interval_lower
from robustlab.errors import RobustlabError
from robustlab.threat import Threat
from robustlab.validation import check_inputs


@dataclass
class BoundState:
    """A compiled model, the input set, and the intervals and relaxations computed so far."""

    graph: Graph
    inputs: InputSet
    lower_slope: str = "adaptive"
    intervals: list[Interval | None] = field(default_factory=list)
    _relaxations: dict[int, Relaxation] = field(default_factory=dict)

    def relaxation(self, k: int) -> Relaxation:
        """The relaxation of (ReLU) node ``k`` from its input's (final) interval; cached."""
        if k not in self._relaxations:
            node = self.graph.nodes[k]
            lo, hi = self.intervals[node.inputs[0]]
            self._relaxations[k] = node.op.relax(lo, hi, self.lower_slope)
        return self._relaxations[k]


def setup(
    model: nn.Module,
    x: Tensor,
    threat: Threat | str,
    lower_slope: str = "adaptive",
    *,
    logits: Tensor | None = None,
    graphs: CompiledGraphs | None = None,
) -> BoundState:
    """Validate the inputs, compile ``model``, fix BatchNorm batch statistics from ``x`` and
    check that the graph computes the model on ``x`` (see
    :func:`~robustlab.certify.graph.verify_graph`; ``logits`` is ``model(x)`` when the caller
    has it already). With ``graphs`` the model is compiled once for all the batches bounded
    through it; the check still runs on every batch.

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
    shape = tuple(x.shape[1:])
    graph = compile_model(model, shape) if graphs is None else graphs.get(model, shape)
    if graph.uses_batch_statistics():
        out = graph.forward(x)  # fixes the batch statistics, differentiably in the weights
    else:
        with torch.no_grad():
            out = graph.forward(x)
    verify_graph(graph, model, x, out=out, logits=logits)
    return BoundState(graph, InputSet(x, t), lower_slope)


class CompiledGraphs:
    """The compiled graph of one model, reused for every batch of the same per-sample shape (a
    certifier bounds many batches of one model): compiled again only for another model or shape.
    It saves the compilation, not the check: :func:`setup` compares the graph with the model on
    every batch, so a model changed in between is refused, never bounded with a stale graph."""

    def __init__(self) -> None:
        self._key: tuple[nn.Module, tuple[int, ...]] | None = None
        self._graph: Graph | None = None

    def get(self, model: nn.Module, input_shape: tuple[int, ...]) -> Graph:
        key = (model, tuple(input_shape))
        if self._graph is None or self._key[0] is not model or self._key[1] != key[1]:
            self._graph = compile_model(model, key[1])
            self._key = key
        return self._graph


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
        depth[k] = node.op.ibp_depth(depth[node.inputs[0]])
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
        iv[k] = op.interval(*(iv[i] for i in node.inputs))
        if isinstance(op, AffineOp):
            prev = ball[node.inputs[0]]
            if prev is not None and not (op.mixing and prev[2]):
                value, rows, mixed = op.forward(prev[0]), op.linear_sq(prev[1]), prev[2] or op.mixing
                ball[k] = (value, rows, mixed)
                rad = inp.eps * rows.clamp_min(0).sqrt()
                lo, hi = iv[k]
                iv[k] = (torch.maximum(lo, value - rad), torch.minimum(hi, value + rad))
        if refine is not None and loose[k] and graph.feeds_relaxed(k):
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
        else:
            op = node.op
            coefs, const = op.backward(coef, state.relaxation(k) if op.relaxed else None)
            for i, c in zip(node.inputs, coefs, strict=True):
                push(i, c)
            if const is not None:
                total = total + const
    return total


def linearized(graph: Graph, x: Tensor) -> Graph:
    """The graph with every ReLU replaced by its activation pattern at ``x`` (a per-sample 0/1
    elementwise scale, :meth:`~robustlab.certify.operators.Operator.linearize`): the local
    linearisation of the network at ``x``."""
    values = graph.forward(x, keep=True)
    nodes = list(graph.nodes)
    for k in graph.relaxed_nodes():
        node = nodes[k]
        op = node.op.linearize(*(values[i] for i in node.inputs))
        nodes[k] = type(node)(op, node.inputs, node.shape, node.name)
    return Graph(nodes)
