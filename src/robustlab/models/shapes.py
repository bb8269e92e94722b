"""Per-sample output shapes of a layer graph, computed from the layer hyper-parameters alone.

Used to size the first Linear layer of a network for a given input (8x8 digits, 28x28 MNIST,
32x32 CIFAR) and to fail early, with one sentence, when an input is too small for an
architecture's convolutions and pooling. No tensor is run through the network.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from robustlab.errors import RobustlabError
from robustlab.models.layers import Normalize, Residual

Shape = tuple[int, ...]

# Layers that keep the per-sample shape.
_SHAPE_PRESERVING = (
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout,
    nn.BatchNorm1d, nn.BatchNorm2d, Normalize,
)


class InputTooSmallError(RobustlabError):
    """A convolution or pooling layer would produce an empty feature map."""


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    """A layer's int-or-pair hyper-parameter (kernel size, stride, ...) as a pair."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window_out(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil: bool):
    """Output length of a sliding window: floor((size + 2p - d(k-1) - 1) / s) + 1 (PyTorch docs)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    out = -(-span // stride) + 1 if ceil else span // stride + 1
    if ceil and (out - 1) * stride >= size + padding:  # last window must start inside the input
        out -= 1
    return out


def _spatial(layer: nn.Module, shape: Shape, kernel, stride, padding, dilation=1, ceil=False):
    if len(shape) != 3:
        raise RobustlabError(
            f"{type(layer).__name__} needs a (C, H, W) input, got per-sample shape {shape}."
        )
    if isinstance(padding, str):  # Conv2d(padding="same") keeps the size (stride 1 only)
        if padding == "same":
            return shape[1], shape[2]
        padding = 0
    ks, ss, ps, ds = pair(kernel), pair(stride), pair(padding), pair(dilation)
    h, w = (_window_out(shape[1 + i], ks[i], ss[i], ps[i], ds[i], ceil) for i in range(2))
    if h < 1 or w < 1:
        raise InputTooSmallError(
            f"{type(layer).__name__} maps a {shape[1]}x{shape[2]} feature map to {h}x{w}."
        )
    return h, w


def output_shape(module: nn.Module, input_shape: Sequence[int]) -> Shape:
    """Per-sample output shape of ``module`` for a per-sample ``input_shape`` (no batch dim).

    Walks ``nn.Sequential`` and :class:`Residual` and knows Conv2d, Linear, Flatten, max/average
    pooling and the shape-preserving layers; raises :class:`RobustlabError` naming any other layer
    or an inconsistent shape, and :class:`InputTooSmallError` when a feature map becomes empty.
    """
    shape: Shape = tuple(int(s) for s in input_shape)
    m = module
    if isinstance(m, nn.Sequential):
        for child in m:
            shape = output_shape(child, shape)
        return shape
    if isinstance(m, Residual):
        out = output_shape(m.body, shape)
        skip = shape if m.shortcut is None else output_shape(m.shortcut, shape)
        if out != skip:
            raise RobustlabError(f"Residual body gives shape {out} but its shortcut gives {skip}.")
        return out
    if isinstance(m, _SHAPE_PRESERVING):
        return shape
    if isinstance(m, nn.Conv2d):
        if shape[0] != m.in_channels:
            raise RobustlabError(f"Conv2d expects {m.in_channels} input channels, got {shape[0]}.")
        return (m.out_channels, *_spatial(m, shape, m.kernel_size, m.stride, m.padding, m.dilation))
    if isinstance(m, nn.MaxPool2d):
        return (shape[0], *_spatial(m, shape, m.kernel_size, m.stride or m.kernel_size, m.padding,
                                    m.dilation, m.ceil_mode))
    if isinstance(m, nn.AvgPool2d):
        return (shape[0], *_spatial(m, shape, m.kernel_size, m.stride or m.kernel_size, m.padding,
                                    1, m.ceil_mode))
    if isinstance(m, nn.AdaptiveAvgPool2d):
        h, w = (None, None) if m.output_size is None else _pair_opt(m.output_size)
        if len(shape) != 3:
            raise RobustlabError(f"AdaptiveAvgPool2d needs a (C, H, W) input, got {shape}.")
        return (shape[0], h or shape[1], w or shape[2])
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise RobustlabError("only Flatten(start_dim=1, end_dim=-1) is supported.")
        n = 1
        for s in shape:
            n *= s
        return (n,)
    if isinstance(m, nn.Linear):
        if shape[-1] != m.in_features:
            raise RobustlabError(f"Linear expects {m.in_features} input features, got {shape[-1]}.")
        return (*shape[:-1], m.out_features)
    raise RobustlabError(f"cannot infer the output shape of layer {type(m).__name__}.")


def _pair_opt(v) -> tuple[int | None, int | None]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Check that ``input_shape`` is an image (C, H, W) and return it."""
    if len(input_shape) != 3:
        raise RobustlabError(
            f"this architecture needs image inputs of shape (C, H, W), got {tuple(input_shape)}."
        )
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


def feature_shape(features: nn.Module, input_shape: Sequence[int], max_size: int = 1024) -> Shape:
    """``output_shape`` of a convolutional feature extractor, with a clear error if the input is
    too small: the message gives the smallest square input the architecture accepts."""
    try:
        return output_shape(features, input_shape)
    except InputTooSmallError:
        c, h, w = image_shape(input_shape)
        smallest = next((s for s in range(1, max_size + 1) if _fits(features, (c, s, s))), None)
        need = f"at least {smallest}x{smallest} pixels" if smallest else "larger inputs"
        raise InputTooSmallError(
            f"inputs of {h}x{w} pixels are too small for this architecture, which needs {need}."
        ) from None


def _fits(features: nn.Module, shape: Shape) -> bool:
    try:
        output_shape(features, shape)
    except InputTooSmallError:
        return False
    return True
