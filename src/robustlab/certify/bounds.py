"""One entry point for the bound methods: :func:`compute_bounds` and :func:`margin_bounds`.

``method`` is ``"ibp"``, ``"crown-ibp"`` or ``"crown"``. For the CROWN methods the returned bound
is the elementwise maximum of the CROWN bound and the IBP bound with elision computed on the same
intermediate intervals -- both are sound, so their maximum is, and the result is never looser than
IBP. (Plain CROWN can be looser than IBP: with the adaptive slope a single unstable ReLU on
``[-1, 2]`` gives ``relu(z) >= z >= -1`` where IBP gives ``>= 0``.) ``tighten=False`` returns the
raw CROWN bound.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlab.certify.crown import MAX_ELEMENTS, crown, crown_ibp
from robustlab.certify.ibp import elided, ibp
from robustlab.certify.propagation import CompiledGraphs, check_spec, setup
from robustlab.certify.spec import margin_spec
from robustlab.errors import RobustlabError
from robustlab.threat import Threat
from robustlab.validation import check_labels

BOUND_METHODS = ("ibp", "crown-ibp", "crown")


def check_method(method: str) -> str:
    key = str(method).strip().lower().replace("_", "-")
    if key not in BOUND_METHODS:
        raise RobustlabError(
            f"Unknown bound method {method!r}; known: {', '.join(BOUND_METHODS)}."
        )
    return key


def compute_bounds(
    model: nn.Module,
    x: Tensor,
    threat: Threat | str,
    spec: Tensor | None = None,
    *,
    y: Tensor | None = None,
    method: str = "crown",
    lower_slope: str = "adaptive",
    tighten: bool = True,
    max_elements: int = MAX_ELEMENTS,
    logits: Tensor | None = None,
    graphs: CompiledGraphs | None = None,
) -> Tensor:
    """Lower bounds (N, S) of ``C f(x')`` for all ``x'`` in the threat's ball around ``x``
    intersected with [0, 1].

    ``spec`` is ``C`` of shape (S, K) or (N, S, K); with labels ``y`` instead it is the margin
    specification (rows ``e_y - e_j``, see :func:`~robustlab.certify.spec.margin_spec`); with
    neither, each logit is bounded. The model is used in its current mode (call it in eval mode
    to certify; BatchNorm in training mode uses the clean batch's statistics).

    The model is compiled and its graph checked against ``model(x)`` on this batch first (a
    custom ``forward``, a hook or an unknown layer is refused with one sentence, see
    :func:`~robustlab.certify.graph.verify_graph`); pass ``logits=model(x)`` when you have it to
    save that forward, and one :class:`~robustlab.certify.propagation.CompiledGraphs` as
    ``graphs`` to every batch of a model to compile it once (each batch is still checked).
    """
    method = check_method(method)
    state = setup(model, x, threat, lower_slope, logits=logits, graphs=graphs)
    if y is not None:
        if spec is not None:
            raise RobustlabError("pass either a specification C or labels y, not both.")
        k = state.graph.nodes[-1].shape[0]
        spec = margin_spec(check_labels(y, x.shape[0], k), k, x.dtype)
    c = check_spec(spec, state)
    if method == "ibp":
        return ibp(state, c)
    bound = crown_ibp(state, c) if method == "crown-ibp" else crown(state, c, max_elements)
    return torch.maximum(bound, elided(state, c)) if tighten else bound


def margin_bounds(
    model: nn.Module, x: Tensor, y: Tensor, threat: Threat | str, *, method: str = "crown",
    **kwargs,
) -> Tensor:
    """Lower bounds (N, K) of the margins ``z_y - z_j`` (0 at ``j = y``); see
    :func:`compute_bounds` for the keyword arguments."""
    return compute_bounds(model, x, threat, y=y, method=method, **kwargs)
