"""Faster exact CPU kernels for the layers that dominate small CNNs under attack.

An attack evaluates the same small network thousands of times, and on the CPU two of PyTorch's
default kernels cost several times their arithmetic (torch 2.13; ``bench/kernel_speed.py``):

- max pooling whose window equals its stride (``nn.MaxPool2d(2)``). In a forward pass without
  gradients, the maximum of the window's strided slices (rows first, then columns) runs about 10x
  faster on NCHW inputs (2x on channels-last ones) and gives bit-identical outputs (NaN included).
  With gradients, finding each window's first maximum (which gets the gradient) from the slices
  costs about as much as PyTorch's kernel; oneDNN's pooling (float32, through its own tensor
  format) is 1.5-2x faster and gives the same outputs and the same gradients bit for bit, ties
  included. It is used only after a one-time check of exactly that on this machine, and never on
  inputs holding a NaN, which oneDNN's maximum skips and PyTorch's propagates;
- the input gradient of a stride-1 convolution with at most 4 input channels (a first layer):
  oneDNN's backward-data kernel is 2-4x slower, for most such layers, than the same gradient
  computed as a convolution with the flipped, transposed kernel,
  ``dx = conv2d(dy, flip(W)^T, padding = k - 1 - p)``, as ``dx = col2im(W^T dy)``, or, for one
  input channel, as a depthwise convolution of ``dy`` with the flipped filters summed over them.
  The forward pass and the weight and bias gradients stay PyTorch's; the input gradient agrees
  with PyTorch's to float rounding.

:func:`fast_kernels` is a context manager (a ``TorchFunctionMode``) that reroutes exactly these
calls while it is active; attacks enter it around their model calls on the CPU once a run-time
comparison with PyTorch's kernels on the model has passed (:mod:`robustlab.runtime.fastpaths`, which
records in each result whether they were used). Everything else
(other devices, dtypes, strides, padding modes, pooling with ``return_indices``) goes to PyTorch
unchanged. Gradients through the block are first-order only, as an attack needs: the rerouted
backward passes are not differentiable themselves, so ``create_graph=True`` double backward (a
gradient penalty, say) needs PyTorch's kernels. Switch the rerouting off with
``ROBUSTLAB_FAST_KERNELS=0`` or :func:`set_fast_kernels`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

_ENABLED = os.environ.get("ROBUSTLAB_FAST_KERNELS", "1").strip().lower() not in ("0", "false", "no")
_FLOATS = (torch.float32, torch.float64)


def set_fast_kernels(enabled: bool) -> None:
    """Turn the rerouting of :func:`fast_kernels` on or off for the whole process."""
    global _ENABLED
    _ENABLED = bool(enabled)


def fast_kernels_enabled() -> bool:
    """Whether :func:`fast_kernels` reroutes on the CPU (not switched off)."""
    return _ENABLED


def _pair(v) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    if isinstance(v, (tuple, list)) and len(v) == 1 and isinstance(v[0], int):
        return (int(v[0]), int(v[0]))
    return None


# --------------------------------------------------------------------------- max pooling
def _tiled_max(x: Tensor, kh: int, kw: int) -> Tensor:
    """Max pooling with window = stride ``(kh, kw)``: the maximum over the ``kh`` rows of each
    window (whole rows, contiguous), then over the ``kw`` columns of the result."""
    ho, wo = x.shape[-2] // kh, x.shape[-1] // kw
    x = x[..., : ho * kh, : wo * kw]
    rows = x[..., 0::kh, :]
    for i in range(1, kh):
        rows = torch.maximum(rows, x[..., i::kh, :])
    out = rows[..., 0::kw]
    for j in range(1, kw):
        out = torch.maximum(out, rows[..., j::kw])
    return out


def _layout(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@cache
def _onednn_pooling_matches_pytorch() -> bool:
    """Whether oneDNN's max pooling gives PyTorch's outputs and input gradients bit for bit on this
    machine, on a small input full of ties (checked once per process)."""
    if not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (2, 5, 6, 6), generator=gen).float()  # most windows hold ties
    upstream = torch.randn(2, 5, 3, 3, generator=gen)
    results = []
    try:
        with torch.enable_grad():
            for pool in (lambda z: F.max_pool2d(z, 2), lambda z: _onednn_max_pool2d(z, (2, 2))):
                z = x.clone().requires_grad_(True)
                out = pool(z)
                results.append((out.detach(), torch.autograd.grad(out, z, upstream)[0]))
    except RuntimeError:  # a PyTorch build whose oneDNN lacks the primitive
        return False
    (out_a, grad_a), (out_b, grad_b) = results
    return torch.equal(out_a, out_b) and torch.equal(grad_a, grad_b)


def _onednn_max_pool2d(x: Tensor, k: tuple[int, int]) -> Tensor:
    """Max pooling (window = stride) through oneDNN's tensor format; differentiable."""
    out = torch.mkldnn_max_pool2d(x.to_mkldnn(), list(k), list(k)).to_dense()
    return out.contiguous(memory_format=_layout(x))


def _max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    """The faster exact pooling when it applies (window = stride, no padding): the maximum of the
    strided window slices without gradients, oneDNN's pooling with them; else None (the caller
    falls back to PyTorch)."""
    k = _pair(kernel_size)
    s = (
        k
        if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0)
        else _pair(stride)
    )
    if (
        return_indices
        or ceil_mode
        or k is None
        or s != k
        or _pair(padding) != (0, 0)
        or _pair(dilation) != (1, 1)
        or not isinstance(input, Tensor)
        or input.dim() != 4
        or input.device.type != "cpu"
        or input.dtype not in _FLOATS
        or input.shape[-2] < k[0]
        or input.shape[-1] < k[1]
    ):
        return None
    if not (torch.is_grad_enabled() and input.requires_grad):
        return _tiled_max(input, k[0], k[1]).contiguous(memory_format=_layout(input))
    if (
        input.dtype != torch.float32
        or not torch.backends.mkldnn.enabled  # switched off by the user
        or not _onednn_pooling_matches_pytorch()
        or torch.isnan(input.detach().sum())  # one cheap pass; an inf - inf sum also falls back
    ):
        return None
    return _onednn_max_pool2d(input, k)


# --------------------------------------------------------------------------- convolution
def _grad_flipped(g: Tensor, w: Tensor, padding: tuple[int, int], size) -> Tensor:
    """``dx = conv2d(dy, flip(W)^T, padding = k - 1 - p)``."""
    kh, kw = w.shape[-2:]
    flipped = w.flip(2, 3).transpose(0, 1)
    return F.conv2d(g, flipped, padding=(kh - 1 - padding[0], kw - 1 - padding[1]))


def _grad_col2im(g: Tensor, w: Tensor, padding: tuple[int, int], size) -> Tensor:
    """``dx = col2im(W^T dy)``: one matrix product, then the patches summed back into the image."""
    cols = torch.matmul(w.reshape(w.shape[0], -1).t(), g.reshape(g.shape[0], g.shape[1], -1))
    return F.fold(cols, size, w.shape[-2:], padding=padding)


def _grad_depthwise(g: Tensor, w: Tensor, padding: tuple[int, int], size) -> Tensor:
    """``dx_c = sum_o conv2d(dy_o, flip(W_oc))``: a grouped convolution with one group per filter
    (channels-last, where oneDNN vectorises it over the filters), summed over the filters."""
    cout, cin, kh, kw = w.shape
    per_filter = F.conv2d(
        g.contiguous(memory_format=torch.channels_last),
        w.flip(2, 3).reshape(cout * cin, 1, kh, kw),
        padding=(kh - 1 - padding[0], kw - 1 - padding[1]),
        groups=cout,
    )
    n, _, h, wd = per_filter.shape
    if cin > 1 or not per_filter.is_contiguous(memory_format=torch.channels_last):
        return per_filter.unflatten(1, (cout, cin)).sum(1)
    # one input channel: the sum over the innermost (filter) dimension as a matrix-vector
    # product, about twice as fast as the reduction
    summed = per_filter.permute(0, 2, 3, 1).reshape(-1, cout) @ per_filter.new_ones(cout)
    return summed.view(n, 1, h, wd)


_INPUT_GRADIENTS = {"flipped": _grad_flipped, "col2im": _grad_col2im, "depthwise": _grad_depthwise}
#: first layers: oneDNN's backward-data is slow for this few input channels
_FEW_CHANNELS = 4
_MANY_FILTERS = 32


def input_gradient_kernel(in_channels: int, out_channels: int) -> str | None:
    """The kernel for a stride-1 convolution's input gradient in a layer with at most 4 input
    channels: ``"col2im"`` from 32 filters on, below that ``"depthwise"`` for one input channel and
    ``"flipped"`` for more; None (PyTorch's) for wider layers.

    A fixed rule rather than timing each call, so that results never depend on the machine's load;
    measured on x86 CPUs with ``bench/kernel_speed.py``, which prints the table to re-check.
    """
    if in_channels > _FEW_CHANNELS:
        return None
    if out_channels >= _MANY_FILTERS:
        return "col2im"
    return "depthwise" if in_channels == 1 else "flipped"


class _Conv2dFirstLayer(torch.autograd.Function):
    """``conv2d`` with stride 1, dilation 1, one group: PyTorch's forward, the input gradient from
    the kernel :func:`input_gradient_kernel` names, weight and bias gradients from PyTorch."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, padding, kernel: str) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.padding, ctx.kernel = padding, kernel
        ctx.has_bias = b is not None
        return F.conv2d(x, w, b, padding=padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b, _, _ = ctx.needs_input_grad
        dx = dw = db = None
        if need_x:
            dx = _INPUT_GRADIENTS[ctx.kernel](grad, w, ctx.padding, x.shape[-2:])
        if need_w or need_b:
            _, dw, db = torch.ops.aten.convolution_backward(
                grad,
                x,
                w,
                [w.shape[0]] if ctx.has_bias else None,
                [1, 1],
                list(ctx.padding),
                [1, 1],
                False,
                [0, 0],
                1,
                [False, need_w, need_b and ctx.has_bias],
            )
        return dx, dw if need_w else None, db if need_b else None, None, None


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, frozen=False):
    """The first-layer convolution when it applies, else None. ``frozen``: no gradient flows to
    ``weight`` and ``bias`` (the caller needs input gradients only)."""
    p = _pair(padding)
    if (
        not torch.is_grad_enabled()
        or not isinstance(input, Tensor)
        or not input.requires_grad
        or input.dim() != 4
        or input.device.type != "cpu"
        or input.dtype not in _FLOATS
        or weight.dtype != input.dtype
        or groups != 1
        or _pair(stride) != (1, 1)
        or _pair(dilation) != (1, 1)
        or p is None
        or not (0 <= p[0] < weight.shape[-2] and 0 <= p[1] < weight.shape[-1])
    ):
        return None
    kernel = input_gradient_kernel(weight.shape[1], weight.shape[0])
    if kernel is None:
        return None
    if frozen:
        weight, bias = weight.detach(), bias.detach() if bias is not None else None
    return _Conv2dFirstLayer.apply(input, weight, bias, p, kernel)


class _FastKernelMode(TorchFunctionMode):
    """The rerouting; ``rerouted`` turns True at the first call a faster kernel took."""

    def __init__(self, weight_gradients: bool) -> None:
        super().__init__()
        self.rerouted = False
        conv2d = partial(_conv2d, frozen=not weight_gradients)
        self.reroutes = {
            F.max_pool2d: _max_pool2d,
            torch.max_pool2d: _max_pool2d,
            torch.conv2d: conv2d,
        }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reroute = self.reroutes.get(func)
        if reroute is not None:
            out = reroute(*args, **kwargs)
            if out is not None:
                self.rerouted = True
                return out
        return func(*args, **kwargs)


@contextmanager
def fast_kernels(
    device: torch.device | str = "cpu", *, weight_gradients: bool = True
) -> Iterator[_FastKernelMode | None]:
    """Reroute CPU max pooling and convolution input gradients to the faster exact kernels (see
    the module docstring) inside the block; a no-op on other devices or when switched off.

    ``weight_gradients=False`` promises that only input gradients are taken (as in an attack): the
    rerouted convolutions then skip the weight and bias gradients, which a custom backward cannot
    otherwise know are unused. Yields the mode, whose ``rerouted`` flag says afterwards whether any
    call took a faster kernel (None where the block is a no-op); the attacks record it
    (:mod:`robustlab.runtime.fastpaths`).
    """
    active = _ENABLED and torch.device(device).type == "cpu"
    mode = _FastKernelMode(weight_gradients) if active else None
    with mode if mode is not None else nullcontext():
        yield mode
