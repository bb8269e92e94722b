"""Incremental forward passes for queries that change their input inside one small window.

A score-based attack such as Square (``attacks/square.py``) queries the model, thousands of times,
with its current point changed inside one small random window per sample. In a CNN that begins
with a local block (a convolution, pointwise layers, a pooling layer), only the block outputs whose
receptive field meets the window change. Recomputing those from an input patch and reusing the rest
from the current point gives the query's logits at a fraction of the block's cost: incremental
inference (Nakandala et al., SIGMOD 2019, "Incremental and approximate inference for faster
occlusion-based deep CNN explanations"; only its exact part is used here).

For a window of rows ``[a, a + s)``, a layer with kernel ``k``, stride ``t`` and padding ``p``
changes its outputs ``o`` with ``o t - p <= a + s - 1`` and ``o t - p + k - 1 >= a`` (and a pooling
layer, in turn, those whose window meets these). The input patch behind the changed outputs carries
the convolution's zero padding where it reaches past the image, so the block's own layers run on
it without padding. The values recomputed are the same sums of the same products (bit-identical in
the tests on oneDNN; at worst different float rounding, should a kernel be chosen for the smaller
shape that sums in another order).

:meth:`IncrementalForward.build` finds the block in a plain ``nn.Sequential``: optional
:class:`~robustlab.models.layers.Normalize` layers, one ``Conv2d`` (zero padding, no dilation),
pointwise layers (activations, eval-mode ``BatchNorm2d``), at most one ``MaxPool2d`` /
``AvgPool2d`` without padding, and pointwise layers again. Layer types must match exactly (a
subclass of ``nn.ReLU`` may mix positions), no module may replace its ``forward`` on the instance,
and no hook may be registered, on any module of the model or globally (the block's layers are not
called as modules). Any other model gets the reason it is refused, and the attack queries it whole.

Trust is also checked at run time: the logits of :meth:`IncrementalForward.reset` and of the first
query through the whole block and through a patch are compared with the plain forward pass of the
whole model on the same input (:func:`robustlab.runtime.fastpaths.agree`, float rounding only). On a
mismatch the forward gives that query the plain logits and sets ``mismatch``; the attack then
queries the whole model for the rest of the run and records that it fell back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.models.layers import Normalize
from robustlab.models.shapes import InputTooSmallError, output_shape, pair
from robustlab.runtime.fastpaths import agree, difference, plain_forward
from robustlab.runtime.kernels import fast_kernels

_ACTIVATIONS = frozenset({
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity,
})  # fmt: skip
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
    "_global_backward_pre_hooks",
)  # fmt: skip


def _pointwise(m: nn.Module) -> bool:
    """Whether ``m`` maps each activation on its own (the same function at every position): exact
    types only, since a subclass may override ``forward``."""
    if type(m) in _ACTIVATIONS:
        return True
    if type(m) is nn.BatchNorm2d:  # running statistics only: eval mode, tracked
        return not m.training and m.track_running_stats and m.running_mean is not None
    return type(m) is nn.Dropout and not m.training


def _local_pooling(m: nn.Module) -> bool:
    return (
        type(m) in (nn.MaxPool2d, nn.AvgPool2d)
        and pair(m.padding) == (0, 0)
        and not m.ceil_mode
        and (type(m) is nn.AvgPool2d or (pair(m.dilation) == (1, 1) and not m.return_indices))
    )


def _hooks(model: nn.Module) -> str | None:
    """Where a hook or a replaced ``forward`` would be skipped: a module that has one, or global
    module hooks; None where there is none."""
    module = nn.modules.module
    if any(getattr(module, name, None) for name in _GLOBAL_HOOKS):
        return "global module hooks are registered"
    for name, m in model.named_modules():
        where = f"module {name} ({type(m).__name__})" if name else "the model"
        if any(getattr(m, attr, None) for attr in _HOOKS):
            return f"{where} has hooks"
        if "forward" in vars(m):
            return f"{where} replaces its forward"
    return None


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of the block: the conv's kernel, stride, padding; the pooling's kernel and
    stride (1, 1 without pooling); the sizes of the input, the conv's output and the block's."""

    k: int
    t: int
    p: int
    pk: int
    pt: int
    size: int
    conv_out: int
    out: int

    def changed(self, a: int, s: int) -> tuple[int, int]:
        """First and last block output whose receptive field meets input rows ``[a, a + s)``."""
        first_conv = -(-(a + self.p - self.k + 1) // self.t)  # ceil division
        last_conv = (a + s - 1 + self.p) // self.t
        first = -(-(first_conv - self.pk + 1) // self.pt)
        return max(first, 0), min(last_conv // self.pt, self.out - 1)

    @cache  # noqa: B019 (a few window sizes per model, on a frozen dataclass)
    def span(self, s: int) -> int:
        """Block outputs recomputed for a window of ``s`` rows: the most any position changes."""
        return max(1, *(last - first + 1 for first, last in self._changed_all(s)))

    def _changed_all(self, s: int) -> list[tuple[int, int]]:
        return [self.changed(a, s) for a in range(self.size - s + 1)]

    def plan(self, s: int, device: torch.device, dtype: torch.dtype) -> _Plan:
        """What a window of ``s`` rows changes, for each of its positions (see :class:`_Plan`)."""
        changed, span = self._changed_all(s), self.span(s)
        # the recomputed outputs start at the first changed one, shifted to stay inside the map
        first = torch.tensor([min(f, self.out - span) for f, _ in changed], device=device)
        patch = ((span - 1) * self.pt + self.pk - 1) * self.t + self.k  # input rows behind them
        rows = (first * (self.pt * self.t) - self.p)[:, None] + torch.arange(patch, device=device)
        inside = ((rows >= 0) & (rows < self.size)).to(dtype)
        return _Plan(span, first, rows.clamp(0, self.size - 1), inside)


@dataclass(frozen=True)
class _Plan:
    """For each window position ``a`` along one axis: the ``span`` block outputs recomputed start at
    ``first[a]``; the input rows behind them are ``rows[a]`` (clamped into the image), with
    ``inside[a]`` 1 in the image and 0 in the convolution's zero padding."""

    span: int
    first: Tensor
    rows: Tensor
    inside: Tensor


class IncrementalForward:
    """Logits of queries that differ from the current points inside one window each.

    ``reset(x)`` remembers the block outputs of the current points ``x`` (N, C, H, W) and returns
    their logits; ``query(x_new, top, left, size)`` returns the logits of ``x_new``, which may differ
    from the current points only in the windows of ``size = (sh, sw)`` pixels at ``(top, left)``;
    ``accept(mask)`` makes the queried points of ``mask`` current, ``keep(mask)`` drops the others.
    ``predict(module, features)`` runs the rest of the network (the attack's counted forward pass);
    ``reference(model, x)`` is the plain forward pass the first logits of each kind are checked
    against (see the module docstring; ``mismatch`` says why a check failed).
    """

    #: the largest share of the block's output recomputed as a patch (see :meth:`worth_it`)
    max_share = 0.5
    #: the least multiply-adds of the block's convolution per query for a patch to pay off
    min_block_macs = 4_000_000
    #: the least multiply-adds per block output (per value kept for each point)
    min_macs_per_output = 50

    def __init__(
        self,
        pre: list[nn.Module],
        conv: nn.Conv2d,
        post: list[nn.Module],
        tail: nn.Sequential,
        axes: tuple[_Axis, _Axis],
        predict: Callable[[nn.Module, Tensor], Tensor],
        model: nn.Module | None = None,
        reference: Callable[[nn.Module, Tensor], Tensor] = plain_forward,
    ) -> None:
        self.pre, self.conv, self.tail, self.axes, self.predict = pre, conv, tail, axes, predict
        self.post = nn.Sequential(*post)
        self.model = model if model is not None else nn.Sequential(*pre, conv, *post, *tail)
        self.reference = reference
        #: why the first logits of a kind differed from the plain forward pass (None: no mismatch)
        self.mismatch: str | None = None
        self._proven: set[str] = set()
        self._features: Tensor | None = None
        self._queried: Tensor | None = None
        self._plan_cache: dict = {}
        #: multiply-adds of the block's convolution per sample
        self.block_macs = axes[0].conv_out * axes[1].conv_out * conv.weight.numel()

    @classmethod
    def of(
        cls,
        model: nn.Module,
        image_shape: tuple[int, ...],
        predict: Callable[[nn.Module, Tensor], Tensor],
        reference: Callable[[nn.Module, Tensor], Tensor] = plain_forward,
    ) -> IncrementalForward | None:
        """:meth:`build`, with None where the model is refused."""
        built = cls.build(model, image_shape, predict, reference)
        return built if isinstance(built, IncrementalForward) else None

    @classmethod
    def build(
        cls,
        model: nn.Module,
        image_shape: tuple[int, ...],
        predict: Callable[[nn.Module, Tensor], Tensor],
        reference: Callable[[nn.Module, Tensor], Tensor] = plain_forward,
    ) -> IncrementalForward | str:
        """The incremental forward for ``model`` on (C, H, W) images, or the reason the model has
        no local first block this class can reuse (see the module docstring)."""
        if type(model) is not nn.Sequential:
            return f"the model is a {type(model).__name__}, not a plain nn.Sequential"
        if len(image_shape) != 3:
            return "the inputs are not (C, H, W) images"
        hooks = _hooks(model)
        if hooks is not None:
            return hooks
        modules = list(model)
        i = 0
        while i < len(modules) and type(modules[i]) is Normalize:
            i += 1
        conv = modules[i] if i < len(modules) else None
        if (
            type(conv) is not nn.Conv2d
            or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str)
            or pair(conv.dilation) != (1, 1)
            or conv.in_channels != image_shape[0]
        ):
            found = type(conv).__name__ if conv is not None else "nothing"
            return f"the first layer is {found}, not a zero-padded nn.Conv2d without dilation"
        j = i + 1
        while j < len(modules) and _pointwise(modules[j]):
            j += 1
        pooling = None
        if j < len(modules) and _local_pooling(modules[j]):
            pooling = modules[j]
            j += 1
            while j < len(modules) and _pointwise(modules[j]):
                j += 1
        if j == len(modules):
            return "no layer follows the first block"
        try:
            conv_shape = output_shape(conv, image_shape)
            out_shape = output_shape(pooling, conv_shape) if pooling else conv_shape
        except InputTooSmallError:
            return "the images are smaller than the first block's windows"
        pk, pt = (
            (pair(pooling.kernel_size), pair(pooling.stride or pooling.kernel_size))
            if pooling
            else ((1, 1), (1, 1))
        )
        k, t, p = pair(conv.kernel_size), pair(conv.stride), pair(conv.padding)
        sizes = [(image_shape[d], conv_shape[d], out_shape[d]) for d in (1, 2)]
        axes = tuple(_Axis(k[d], t[d], p[d], pk[d], pt[d], *sizes[d]) for d in range(2))
        tail = nn.Sequential(*modules[j:])
        return cls(modules[:i], conv, modules[i + 1 : j], tail, axes, predict, model, reference)

    # --------------------------------------------------------------------- the block
    def _block(self, x: Tensor, padded: bool = False) -> Tensor:
        """The block's outputs; ``padded``: ``x`` already carries the conv's zero padding."""
        with torch.no_grad(), fast_kernels(x.device, weight_gradients=False):
            conv = self.conv
            padding = 0 if padded else conv.padding
            z = F.conv2d(x, conv.weight, conv.bias, conv.stride, padding, 1, conv.groups)
            return self.post(z)

    def _inputs(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            for m in self.pre:
                x = m(x)
        return x

    def _whole_block(self, x: Tensor) -> Tensor:
        """The block's outputs for whole images ``x`` (contiguous, for the windows' flat index)."""
        return self._block(self._inputs(x)).contiguous()

    def reset(self, x: Tensor) -> Tensor:
        """Logits of ``x``, now the current points."""
        self._features = self._whole_block(x)
        self._queried = None
        return self._checked("reset", x, self.predict(self.tail, self._features))

    def _checked(self, kind: str, x: Tensor, logits: Tensor) -> Tensor:
        """``logits``, compared with the plain forward pass of ``x`` the first time for each
        ``kind``; on a mismatch the plain logits, with ``mismatch`` set."""
        if kind in self._proven:
            return logits
        plain = self.reference(self.model, x)
        if not agree(logits, plain):
            self.mismatch = f"{kind}: {difference(logits, plain)}"
            return plain
        self._proven.add(kind)
        return logits

    def query(self, x: Tensor, top: Tensor, left: Tensor, size: tuple[int, int]) -> Tensor:
        """Logits of ``x``, equal to the current points outside the ``size`` windows at
        ``(top, left)`` (one per sample)."""
        features = self._features
        assert features is not None, "reset() first"
        n, c, h, w = x.shape
        if not self.worth_it(n, size):
            self._queried = self._whole_block(x)
            return self._checked("whole-block query", x, self.predict(self.tail, self._queried))
        row_plan, col_plan = self._plans(size, x)
        index = row_plan.rows[top][:, :, None] * w + col_plan.rows[left][:, None, :]
        patch = x.reshape(n, c, -1).gather(2, index.view(n, 1, -1).expand(n, c, -1))
        patch = self._inputs(patch.view(n, c, *index.shape[1:]))
        # zero padding as a product with the 0/1 mask (the inputs are finite): several times
        # faster on the CPU than torch.where
        inside = row_plan.inside[top][:, :, None] * col_plan.inside[left][:, None, :]
        fresh = self._block(patch * inside[:, None], padded=True)
        self._queried = _scatter_windows(
            features.clone(), row_plan.first[top], col_plan.first[left], fresh
        )
        return self._checked("patch query", x, self.predict(self.tail, self._queried))

    def worth_it(self, n: int, size: tuple[int, int]) -> bool:
        """Whether a query of ``n`` points with ``size`` windows recomputes a patch of the block
        rather than the whole block. The patch must cover at most ``max_share`` of the block's
        output; the block's convolution must cost at least ``min_block_macs`` multiply-adds over
        the batch (below, the patch's few dozen small tensor operations cost more than they save)
        and ``min_macs_per_output`` per block output (below, as in a 3x3 convolution without
        pooling, copying the kept outputs for each query costs about what the patch saves). A
        fixed rule, so that speed never depends on the machine's load, measured on x86 CPUs with
        ``bench/square_incremental.py``."""
        rows, cols = self.axes
        outputs = rows.out * cols.out
        return (
            rows.span(size[0]) * cols.span(size[1]) <= self.max_share * outputs
            and n * self.block_macs >= self.min_block_macs
            and self.block_macs >= self.min_macs_per_output * outputs * self.conv.out_channels
        )

    def _plans(self, size: tuple[int, int], x: Tensor) -> tuple[_Plan, _Plan]:
        key = (size, x.device, x.dtype)
        if key not in self._plan_cache:
            self._plan_cache[key] = tuple(
                axis.plan(s, x.device, x.dtype) for axis, s in zip(self.axes, size, strict=True)
            )
        return self._plan_cache[key]

    def accept(self, mask: Tensor) -> None:
        """The points of ``mask`` move to their last query."""
        assert self._features is not None and self._queried is not None
        self._features[mask] = self._queried[mask]

    def keep(self, mask: Tensor) -> None:
        """Only the points of ``mask`` (a bool mask or indices) stay, in that order."""
        assert self._features is not None
        self._features = self._features[mask]
        self._queried = None


def window_index(top: Tensor, left: Tensor, size: tuple[int, int], width: int) -> Tensor:
    """(N, sh * sw) flat indices (into ``H * width``) of one ``size`` window per sample."""
    rows = top.view(-1, 1, 1) + torch.arange(size[0], device=top.device).view(1, -1, 1)
    cols = left.view(-1, 1, 1) + torch.arange(size[1], device=top.device).view(1, 1, -1)
    return (rows * width + cols).view(top.shape[0], -1)


def _scatter_windows(x: Tensor, top: Tensor, left: Tensor, values: Tensor) -> Tensor:
    """``x`` (N, C, H, W) with the window of ``values`` (N, C, sh, sw) written at (top, left)."""
    n, c, _, w = x.shape
    index = window_index(top, left, values.shape[-2:], w)[:, None, :].expand(n, c, -1)
    x.view(n, c, -1).scatter_(2, index, values.reshape(n, c, -1))
    return x
