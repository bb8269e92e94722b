"""A model as a small graph of bound-propagation operations, and the proof that it is the model.

Bound methods (IBP, CROWN) do not trace the model: they walk its modules. :func:`compile_model`
turns an ``nn.Sequential`` (nested freely) of supported layers into a topologically ordered list
of :class:`Node` s, each holding one operation:

* :class:`AffineOp` subclasses -- ``Linear``, ``Conv2d`` and average pooling (as a depthwise
  convolution) are :class:`WeightOp` s; ``Normalize`` and ``BatchNorm`` (eval mode, or the clean
  batch's statistics in training mode) are elementwise :class:`ScaleOp` s; ``Flatten`` is a
  :class:`ReshapeOp`;
* :class:`ReLUOp`;
* :class:`AddOp` for the ``body(x) + shortcut(x)`` of :class:`~robustlab.models.layers.Residual`.

Each affine operation knows its forward map, the map with ``|W|`` (interval radii) and ``W**2``
(L2 row norms), its transpose (the backward step of linear bound propagation) and the bias term of
a backward step. Operations reference the module's parameters, so bounds are differentiable with
respect to the weights (certified training).

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

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.certify.liresnet import LiResNetBlock
from robustlab.errors import RobustlabError
from robustlab.models.factory import unwrap
from robustlab.models.layers import Normalize, Residual
from robustlab.models.shapes import pair

Shape = tuple[int, ...]

#: layers bound propagation models, matched by exact type (see :data:`SUPPORTED_TYPES`)
SUPPORTED_LAYERS = (
    "Sequential",
    "Linear",
    "Conv2d",
    "ReLU",
    "Flatten",
    "Identity",
    "BatchNorm1d",
    "BatchNorm2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "Normalize",
    "Residual",
    "LiResNetBlock",
)

#: the classes behind :data:`SUPPORTED_LAYERS`. Exact types only: a subclass -- even of
#: ``nn.Sequential`` or ``nn.ReLU`` -- may override ``forward`` and compute something else.
#: ``LiResNetBlock`` is a ``Residual`` that only changes the construction.
SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Sequential, nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Identity, nn.BatchNorm1d,
    nn.BatchNorm2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, Normalize, Residual, LiResNetBlock,
)  # fmt: skip

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


def _flat_bs(a: Tensor, n_lead: int = 2) -> tuple[Tensor, tuple[int, ...]]:
    """Merge the leading ``(B, S)`` dimensions of a backward coefficient tensor."""
    lead = tuple(a.shape[:n_lead])
    return a.reshape(-1, *a.shape[n_lead:]), lead


# ----------------------------------------------------------------------------------- operations
class Op:
    """One operation of the graph."""

    kind = "op"


class AffineOp(Op, ABC):
    """``y = L(x) + b`` for a linear map ``L``.

    Subclasses implement :meth:`linear` (``L``), :meth:`linear_abs` (``|L|``, the map with
    absolute weights), :meth:`linear_sq` (the map with squared weights), :meth:`transpose`
    (``A -> A L`` for coefficients ``A`` of shape ``(B, S, *out_shape)``) and :meth:`bias_term`
    (``A b`` summed over the output, shape ``(B, S)``).
    """

    #: a general (non-diagonal) linear map; elementwise maps and reshapes are not
    mixing = True

    def forward(self, x: Tensor) -> Tensor:
        return self.add_bias(self.linear(x))

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


class WeightOp(AffineOp):
    """Shared parts of ``Linear`` and ``Conv2d``: a weight tensor and an optional bias vector."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight = weight
        self.bias = bias

    def linear(self, x: Tensor) -> Tensor:
        return self._apply(x, self.weight)

    def linear_abs(self, x: Tensor) -> Tensor:
        return self._apply(x, self.weight.abs())

    def linear_sq(self, x: Tensor) -> Tensor:
        return self._apply(x, self.weight.square())

    @abstractmethod
    def _apply(self, x: Tensor, weight: Tensor) -> Tensor:
        """The layer's map with ``weight`` in place of its own (no bias)."""


class LinearOp(WeightOp):
    kind = "Linear"

    def _apply(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight)

    def add_bias(self, y: Tensor) -> Tensor:
        return y if self.bias is None else y + self.bias

    def transpose(self, a: Tensor) -> Tensor:
        return a @ self.weight

    def bias_term(self, a: Tensor) -> Tensor | None:
        return None if self.bias is None else a @ self.bias


class ConvOp(WeightOp):
    """2-D convolution (also average pooling, as a depthwise convolution with constant weights)."""

    kind = "Conv2d"

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        in_shape: Shape,
        out_shape: Shape,
    ) -> None:
        super().__init__(weight, bias)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.in_shape, self.out_shape = in_shape, out_shape
        # conv_transpose2d needs the output padding that restores the exact input size
        k = weight.shape[-2:]
        self.output_padding = tuple(
            in_shape[1 + i]
            - ((out_shape[1 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + 1)
            for i in range(2)
        )

    def _apply(self, x: Tensor, weight: Tensor) -> Tensor:
        x, lead = _flat_bs(x, x.dim() - 3)
        y = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)
        return y.reshape(*lead, *y.shape[1:])

    def add_bias(self, y: Tensor) -> Tensor:
        return y if self.bias is None else y + self.bias.view(-1, 1, 1)

    def transpose(self, a: Tensor) -> Tensor:
        flat, lead = _flat_bs(a)
        if self.in_shape[0] <= 3 and self.groups == 1:
            # few input channels (a first layer on images): a matrix product and F.fold is
            # several times faster on CPU than conv_transpose2d with 1-3 output channels
            w = self.weight
            cols = torch.matmul(w.reshape(w.shape[0], -1).t(), flat.flatten(2))
            out = F.fold(cols, self.in_shape[1:], w.shape[2:], self.dilation, self.padding,
                         self.stride)
        else:
            out = F.conv_transpose2d(
                flat, self.weight, None, self.stride, self.padding, self.output_padding,
                self.groups, self.dilation,
            )
        return out.reshape(*lead, *out.shape[1:])

    def bias_term(self, a: Tensor) -> Tensor | None:
        if self.bias is None:
            return None
        return a.sum((-2, -1)) @ self.bias


class ScaleOp(AffineOp):
    """Elementwise ``y = x * scale + shift`` (Normalize, BatchNorm; ReLU patterns in M4).

    ``scale`` and ``shift`` broadcast against one sample (shared), or have a leading batch
    dimension (``per_sample=True``).
    """

    kind = "Scale"
    mixing = False

    def __init__(self, scale: Tensor, shift: Tensor | None, per_sample: bool = False) -> None:
        self.scale, self.shift, self.per_sample = scale, shift, per_sample

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
    """BatchNorm as an elementwise affine map.

    In eval mode the running statistics define it. In training mode (or without running
    statistics) it uses the batch statistics of the clean inputs, fixed by :meth:`set_batch`
    before bounds are propagated, so every bound is a bound of one affine map.
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


class ReshapeOp(AffineOp):
    kind = "Flatten"
    mixing = False

    def __init__(self, in_shape: Shape, out_shape: Shape) -> None:
        self.in_shape, self.out_shape = in_shape, out_shape

    def linear(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[: x.dim() - len(self.in_shape)], *self.out_shape)

    linear_abs = linear
    linear_sq = linear

    def transpose(self, a: Tensor) -> Tensor:
        return a.reshape(*a.shape[: a.dim() - len(self.out_shape)], *self.in_shape)


class ReLUOp(Op):
    kind = "ReLU"


class AddOp(Op):
    kind = "Add"


# ----------------------------------------------------------------------------------- the graph
@dataclass
class Node:
    """An operation, the indices of its input nodes, its per-sample output shape, its name."""

    op: Op | None  # None for the input node
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

    def feeds_relu(self, k: int) -> bool:
        return any(isinstance(self.nodes[c].op, ReLUOp) for c in self.consumers[k])

    def relu_nodes(self) -> list[int]:
        return [k for k, n in enumerate(self.nodes) if isinstance(n.op, ReLUOp)]

    def batchnorm_ops(self) -> list[BatchNormOp]:
        return [n.op for n in self.nodes if isinstance(n.op, BatchNormOp)]

    def forward(self, x: Tensor, keep: bool = False) -> Tensor | list[Tensor]:
        """Evaluate the graph on a batch (all node values with ``keep=True``).

        BatchNorm layers that use batch statistics take them from this batch.
        """
        values: list[Tensor] = [x]
        for node in self.nodes[1:]:
            ins = [values[i] for i in node.inputs]
            op = node.op
            if isinstance(op, ReLUOp):
                v = torch.relu(ins[0])
            elif isinstance(op, AddOp):
                v = ins[0] + ins[1]
            else:
                if isinstance(op, BatchNormOp) and op.batch_stats:
                    op.set_batch(ins[0])
                v = op.forward(ins[0])
            values.append(v)
        return values if keep else values[-1]

    def uses_batch_statistics(self) -> bool:
        return any(isinstance(n.op, BatchNormOp) and n.op.batch_stats for n in self.nodes)


# ----------------------------------------------------------------------------------- compile
def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class _Builder:
    def __init__(self, input_shape: Shape, like: Tensor | None) -> None:
        self.nodes: list[Node] = [Node(None, (), tuple(input_shape), "input")]
        self.like = like  # a parameter: dtype and device of constant weights (average pooling)

    def add(self, op: Op, inputs: tuple[int, ...], shape: Shape, name: str) -> int:
        self.nodes.append(Node(op, inputs, tuple(int(s) for s in shape), name))
        return len(self.nodes) - 1

    def build(self, module: nn.Module, src: int, name: str) -> int:
        shape = self.nodes[src].shape
        label = name or type(module).__name__
        kind = type(module)  # exact types: a subclass may override forward
        if kind not in SUPPORTED_TYPES:
            raise _unsupported(label, module, _subclass_note(module))
        if kind is nn.Sequential:
            for child_name, child in module.named_children():
                src = self.build(child, src, f"{name}.{child_name}" if name else child_name)
            return src
        if kind in (Residual, LiResNetBlock):
            body = self.build(module.body, src, f"{label}.body")
            skip = src if module.shortcut is None else self.build(
                module.shortcut, src, f"{label}.shortcut"
            )
            if self.nodes[body].shape != self.nodes[skip].shape:
                raise _unsupported(label, module, "body and shortcut shapes differ")
            return self.add(AddOp(), (body, skip), self.nodes[body].shape, label)
        if kind is nn.Identity:
            return src
        if kind is nn.ReLU:
            return self.add(ReLUOp(), (src,), shape, label)
        if kind is nn.Linear:
            if len(shape) != 1 or shape[0] != module.in_features:
                raise _unsupported(label, module, f"expects a flat input of {module.in_features} "
                                   f"features, got per-sample shape {shape}")
            op = LinearOp(module.weight, module.bias)
            return self.add(op, (src,), (module.out_features,), label)
        if kind is nn.Conv2d:
            return self._conv(module, src, label)
        if kind in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
            return self._avgpool(module, src, label)
        if kind is nn.Flatten:
            if module.start_dim != 1 or module.end_dim != -1:
                raise _unsupported(label, module, "only Flatten(start_dim=1, end_dim=-1)")
            out = (math.prod(shape),)
            return self.add(ReshapeOp(shape, out), (src,), out, label)
        if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
            if (kind is nn.BatchNorm2d) != (len(shape) == 3):
                raise _unsupported(label, module, f"per-sample input shape {shape}")
            return self.add(BatchNormOp(module, shape), (src,), shape, label)
        # Normalize
        view = (-1,) + (1,) * (len(shape) - 1)
        scale = (1.0 / module.std).view(view)
        shift = (-module.mean / module.std).view(view)
        return self.add(ScaleOp(scale, shift), (src,), shape, label)

    def _conv(self, m: nn.Conv2d, src: int, label: str) -> int:
        shape = self.nodes[src].shape
        if len(shape) != 3 or shape[0] != m.in_channels:
            raise _unsupported(label, m, f"per-sample input shape {shape}")
        if m.padding_mode != "zeros":
            raise _unsupported(label, m, f"padding_mode={m.padding_mode!r}")
        k, s, d = pair(m.kernel_size), pair(m.stride), pair(m.dilation)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                p = (0, 0)
            elif all(d[i] * (k[i] - 1) % 2 == 0 for i in range(2)):
                p = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
            else:
                raise _unsupported(label, m, "asymmetric 'same' padding")
        else:
            p = pair(m.padding)
        out = (m.out_channels, *(_conv_out(shape[1 + i], k[i], s[i], p[i], d[i]) for i in range(2)))
        op = ConvOp(m.weight, m.bias, s, p, d, m.groups, shape, out)
        return self.add(op, (src,), out, label)

    def _avgpool(self, m: nn.Module, src: int, label: str) -> int:
        shape = self.nodes[src].shape
        if len(shape) != 3:
            raise _unsupported(label, m, f"per-sample input shape {shape}")
        c, h, w = shape
        if isinstance(m, nn.AdaptiveAvgPool2d):
            size = m.output_size  # an int, or a pair whose None entries keep the input size
            oh, ow = (size, size) if isinstance(size, int) else tuple(size)
            oh, ow = oh or h, ow or w
            if h % oh or w % ow:
                raise _unsupported(label, m, f"{h}x{w} is not a multiple of {oh}x{ow}")
            k = s = (h // oh, w // ow)
            p = (0, 0)
        else:
            k = pair(m.kernel_size)
            s = pair(m.stride or m.kernel_size)
            p = pair(m.padding)
            if m.ceil_mode or m.divisor_override is not None or (
                any(p) and not m.count_include_pad
            ):
                raise _unsupported(label, m, "ceil_mode, divisor_override or count_include_pad")
        kw = {"dtype": self.like.dtype, "device": self.like.device} if self.like is not None else {}
        weight = torch.full((c, 1, *k), 1.0 / (k[0] * k[1]), **kw)
        out = (c, *(_conv_out(shape[1 + i], k[i], s[i], p[i], 1) for i in range(2)))
        op = ConvOp(weight, None, s, p, (1, 1), c, shape, out)
        op.kind = "AvgPool2d"
        return self.add(op, (src,), out, label)


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
