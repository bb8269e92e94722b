"""A model as a small graph of bound-propagation operators, and the proof that it is the model.

Bound methods (IBP, CROWN) do not trace the model: they walk its modules. :func:`compile_model`
turns an ``nn.Sequential`` (nested freely) of supported layers into a topologically ordered list
of :class:`Node` s, each holding one operator of :mod:`robustlab.certify.operators` -- the class
that :data:`~robustlab.certify.operators.OPERATORS` gives for the layer's exact type, holding the
layer's forward map, its interval rule and its linear relaxation. Operators reference the
module's parameters, so bounds are differentiable with respect to the weights (certified
training).

A bound is a bound of the graph, so the graph must be the model (the DESIGN contract "bounds the
model the user gave"). Two checks make it so:

* structural, in :func:`compile_model`: layers are matched by *exact* type (a subclass may
  override ``forward``), and a model with a forward hook or pre-hook anywhere -- on a module, or
  registered globally with ``torch.nn.modules.module.register_module_forward_hook`` -- or an
  instance that replaces its ``forward`` is refused (:func:`check_no_hooks`);
* numerical, in :func:`verify_graph`, on every batch that is bounded: ``graph(x)`` must equal
  ``model(x)`` up to float rounding (:data:`MATCH_RTOL`), else :class:`GraphMismatchError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from robustlab.certify.operators import OPERATORS, BatchNormOp, Operator, Refused, Shape
from robustlab.certify.operators import ConvOp as ConvOp  # re-exported
from robustlab.certify.operators import WeightOp as WeightOp  # re-exported
from robustlab.errors import RobustlabError
from robustlab.models.factory import unwrap

#: the classes bound propagation models: containers (``nn.Sequential``) and the layer types of
#: :data:`~robustlab.certify.operators.OPERATORS`. Exact types only: a subclass -- even of
#: ``nn.Sequential`` or ``nn.ReLU`` -- may override ``forward`` and compute something else.
SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (nn.Sequential, *OPERATORS)

#: layers bound propagation models, matched by exact type (see :data:`SUPPORTED_TYPES`)
SUPPORTED_LAYERS = tuple(t.__name__ for t in SUPPORTED_TYPES)

#: per-module dictionaries of hooks that run code around ``forward`` (backward hooks do not
#: change the values a forward returns)
_MODULE_HOOKS = (
    ("_forward_pre_hooks", "a forward pre-hook"),
    ("_forward_pre_hooks_with_kwargs", "a forward pre-hook"),
    ("_forward_hooks", "a forward hook"),
    ("_forward_hooks_with_kwargs", "a forward hook"),
    ("_forward_hooks_always_called", "a forward hook"),
)
#: the same, registered for every module with ``torch.nn.modules.module``'s global functions
_GLOBAL_HOOKS = (
    ("_global_forward_pre_hooks", "register_module_forward_pre_hook"),
    ("_global_forward_hooks", "register_module_forward_hook"),
    ("_global_forward_hooks_with_kwargs", "register_module_forward_hook"),
    ("_global_forward_hooks_always_called", "register_module_forward_hook"),
)
#: instance attributes that replace what calling a module runs (``Module.compile()`` in place
#: compiles the module's own call, hooks included, so it is not one of them)
_CALL_OVERRIDES = ("forward", "__call__", "_call_impl", "_wrapped_call_impl")

#: tolerance of :func:`verify_graph`, relative to ``1 + max |logit|`` of each sample. The graph
#: evaluates the model's own operations with a few rewritten (BatchNorm and Normalize folded into
#: one multiply-add, average pooling as a depthwise convolution), so in float32 the two differ by
#: a few units of rounding of the largest intermediate value: under 1e-6 of the logits on the
#: networks tested, so 1e-4 leaves two orders of margin, while a function that differs (a skip
#: connection, a scaling, a hook) moves logits by a good part of their own size. The ``1 +``
#: keeps the test meaningful for logits near 0; lower precisions scale it (10 epsilon).
MATCH_RTOL = 1e-4


class UnsupportedLayerError(RobustlabError):
    """A layer that the bound methods cannot propagate through."""


class GraphMismatchError(UnsupportedLayerError):
    """The compiled graph does not compute what the model computes (hooks, a replaced forward,
    or outputs that differ on the batch being bounded)."""


def _unsupported(name: str, module: nn.Module, why: str = "") -> UnsupportedLayerError:
    detail = f" ({why})" if why else ""
    return UnsupportedLayerError(
        f"Cannot bound layer '{name}' of type {type(module).__name__}{detail}; supported layers: "
        f"{', '.join(SUPPORTED_LAYERS)}."
    )


def _subclass_note(module: nn.Module) -> str:
    """Why an instance of a subclass of a supported layer is refused, or ''."""
    base = next((t for t in SUPPORTED_TYPES if isinstance(module, t)), None)
    if base is None:
        return ""
    return (f"a subclass of {base.__name__}, which may compute something else: only the exact "
            f"classes are bounded")


def check_no_hooks(model: nn.Module) -> None:
    """Refuse a model whose call runs code its compiled graph cannot see: a forward hook or
    pre-hook on any submodule, a global module forward hook, or an instance attribute that
    replaces ``forward`` (or the call itself). Raises :class:`GraphMismatchError`."""
    registry = nn.modules.module
    for attr, function in _GLOBAL_HOOKS:
        if getattr(registry, attr, None):
            raise GraphMismatchError(
                f"Cannot bound the model while a global module forward hook is registered "
                f"(torch.nn.modules.module.{function}): it runs code the bound methods cannot "
                f"see, so remove it first."
            )
    for name, m in model.named_modules():
        where = f"layer '{name}' of type {type(m).__name__}" if name else (
            f"the model ({type(m).__name__})")
        for attr, what in _MODULE_HOOKS:
            if getattr(m, attr, None):
                raise GraphMismatchError(
                    f"Cannot bound {where}: it has {what}, which runs code the bound methods "
                    f"cannot see, so remove it first."
                )
        replaced = [a for a in _CALL_OVERRIDES if vars(m).get(a) is not None]
        if replaced:
            raise GraphMismatchError(
                f"Cannot bound {where}: its instance attribute '{replaced[0]}' replaces what "
                f"calling it runs, which the bound methods cannot see."
            )




# ----------------------------------------------------------------------------------- the graph
@dataclass
class Node:
    """An operator, the indices of its input nodes, its per-sample output shape, its name."""

    op: Operator | None  # None for the input node
    inputs: tuple[int, ...]
    shape: Shape
    name: str


@dataclass
class Graph:
    """Nodes in topological order; node 0 is the input, the last node the output."""

    nodes: list[Node]
    consumers: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.consumers = [[] for _ in self.nodes]
        for k, node in enumerate(self.nodes):
            for i in node.inputs:
                self.consumers[i].append(k)

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    @property
    def input_shape(self) -> Shape:
        return self.nodes[0].shape

    def feeds_relaxed(self, k: int) -> bool:
        """Whether node ``k`` is the input of a relaxed (non-linear) operator, e.g. a ReLU."""
        return any(self.nodes[c].op.relaxed for c in self.consumers[k])

    def relaxed_nodes(self) -> list[int]:
        """The nodes of relaxed (non-linear) operators, e.g. ReLUs."""
        return [k for k, n in enumerate(self.nodes) if n.op is not None and n.op.relaxed]

    def batchnorm_ops(self) -> list[BatchNormOp]:
        return [n.op for n in self.nodes if isinstance(n.op, BatchNormOp)]

    def forward(self, x: Tensor, keep: bool = False) -> Tensor | list[Tensor]:
        """Evaluate the graph on a batch (all node values with ``keep=True``).

        BatchNorm layers that use batch statistics take them from this batch.
        """
        values: list[Tensor] = [x]
        for node in self.nodes[1:]:
            values.append(node.op.evaluate(*(values[i] for i in node.inputs)))
        return values if keep else values[-1]

    def uses_batch_statistics(self) -> bool:
        return any(op.batch_stats for op in self.batchnorm_ops())


# ----------------------------------------------------------------------------------- compile
class _Builder:
    """The graph under construction (the :class:`~robustlab.certify.operators.Builder` that
    operators compile into)."""

    def __init__(self, input_shape: Shape, like: Tensor | None) -> None:
        self.nodes: list[Node] = [Node(None, (), tuple(input_shape), "input")]
        self.like = like  # a parameter: dtype and device of constant weights (average pooling)

    def shape(self, node: int) -> Shape:
        return self.nodes[node].shape

    def add(self, op: Operator, inputs: tuple[int, ...], shape: Shape, name: str) -> int:
        self.nodes.append(Node(op, inputs, tuple(int(s) for s in shape), name))
        return len(self.nodes) - 1

    def build(self, module: nn.Module, src: int, name: str) -> int:
        label = name or type(module).__name__
        kind = type(module)  # exact types: a subclass may override forward
        if kind is nn.Sequential:
            for child_name, child in module.named_children():
                src = self.build(child, src, f"{name}.{child_name}" if name else child_name)
            return src
        operator = OPERATORS.get(kind)
        if operator is None:
            raise _unsupported(label, module, _subclass_note(module))
        try:
            return operator.compile(module, self, src, label)
        except Refused as why:
            raise _unsupported(label, module, str(why)) from None


def compile_model(model: nn.Module, input_shape: Shape) -> Graph:
    """Compile ``model`` for per-sample ``input_shape`` (no batch dimension) into a :class:`Graph`.

    Raises :class:`UnsupportedLayerError` naming the first layer the bound methods cannot handle
    (any type not in :data:`SUPPORTED_TYPES`, subclasses included) and
    :class:`GraphMismatchError` for a forward hook or a replaced ``forward``
    (:func:`check_no_hooks`). ``torch.compile`` and DataParallel wrappers are looked through
    (their own hooks are checked too). The graph still has to be checked against the model on
    the batch it bounds: :func:`verify_graph`.
    """
    inner = unwrap(model)
    like = next(iter(inner.parameters()), None)
    if like is None:
        like = next(iter(inner.buffers()), None)
    builder = _Builder(tuple(int(s) for s in input_shape), like)
    builder.build(inner, 0, "")
    check_no_hooks(model)  # the wrapper's hooks too
    graph = Graph(builder.nodes)
    if len(graph.nodes) == 1 or len(graph.nodes[-1].shape) != 1:
        raise RobustlabError(
            f"the model must map inputs to logits of shape (N, K); its output has per-sample "
            f"shape {graph.nodes[-1].shape}."
        )
    return graph


# ----------------------------------------------------------------------------------- the check
def model_output(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` without gradients and without side effects: the running statistics of
    BatchNorm layers in training mode are restored afterwards."""
    saved = [
        (m, {k: b.clone() for k, b in m._buffers.items() if b is not None})
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for m, buffers in saved:
            for k, b in buffers.items():
                m._buffers[k].copy_(b)


def _difference(out: Tensor, ref: object) -> str | None:
    """Why ``out`` (the graph's output) is not ``ref`` (the model's) up to :data:`MATCH_RTOL`,
    as one sentence, or None when it is."""
    if not isinstance(ref, Tensor) or ref.shape != out.shape or not ref.is_floating_point():
        got = (f"a {ref.dtype} tensor of shape {tuple(ref.shape)}" if isinstance(ref, Tensor)
               else type(ref).__name__)
        return (f"Cannot bound this model: it returns {got} where its compiled graph returns "
                f"float logits of shape {tuple(out.shape)}.")
    if not bool(torch.isfinite(ref).all()):
        return "Cannot bound this model: its outputs on this batch are not all finite."
    coarsest = max(torch.finfo(ref.dtype).eps, torch.finfo(out.dtype).eps)
    rtol = max(MATCH_RTOL, 10 * coarsest)
    ref64, out64 = ref.detach().double().flatten(1), out.detach().double().flatten(1)
    scale = 1 + ref64.abs().amax(1)
    excess = (out64 - ref64).abs().amax(1) / scale  # NaN in the graph fails the test below
    if bool((excess <= rtol).all()):
        return None
    i = int(torch.nan_to_num(excess, nan=float("inf")).argmax())
    return (f"Cannot bound this model: its compiled graph's outputs differ from the model's by "
            f"{float(excess[i]):.3g} x (1 + max |logit|) on sample {i}, above the float rounding "
            f"tolerance {rtol:g}, so its forward computes something the bound methods do not "
            f"model (a custom forward, a hook or a functional op).")


def verify_graph(graph: Graph, model: nn.Module, x: Tensor, *, out: Tensor | None = None,
                 logits: Tensor | None = None) -> None:
    """Check that ``graph`` computes ``model`` on the batch ``x``: no forward hook appeared since
    compilation (:func:`check_no_hooks`) and ``graph(x)`` equals ``model(x)`` per sample up to
    ``MATCH_RTOL * (1 + max |logit|)``.

    ``out`` is ``graph.forward(x)`` and ``logits`` is ``model(x)`` when the caller has them
    already (certified training computes both anyway); missing ones are computed here, without
    gradients. Raises :class:`GraphMismatchError`: a refused model is never bounded.
    """
    check_no_hooks(model)
    if out is None:
        with torch.no_grad():
            out = graph.forward(x)
    ref = model_output(model, x) if logits is None else logits
    why = _difference(out, ref)
    if why is not None:
        raise GraphMismatchError(why)
