"""Convolutions: ``nn.Conv2d``, and average pooling as a depthwise convolution with constant
weights ``1 / (kh kw)`` (``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d`` with an exact divisor).

``y = W * x + b``. IBP (Gowal et al. 2018, eq. 6): ``[W * c + b -+ |W| * r]``. CROWN (Zhang et
al. 2018, Theorem 3.2): ``A y = (W^T * A) x + sum A b``, the transpose being
``conv_transpose2d`` with the output padding that restores the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.certify.operators.base import Builder, Refused, Shape, flat_bs
from robustlab.certify.operators.linear import WeightOp
from robustlab.models.shapes import pair


def conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output size of a convolution along one axis."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class ConvOp(WeightOp):
    """2-D convolution."""

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

    @classmethod
    def compile(cls, m: nn.Conv2d, builder: Builder, src: int, label: str) -> int:
        shape = builder.shape(src)
        if len(shape) != 3 or shape[0] != m.in_channels:
            raise Refused(f"per-sample input shape {shape}")
        if m.padding_mode != "zeros":
            raise Refused(f"padding_mode={m.padding_mode!r}")
        k, s, d = pair(m.kernel_size), pair(m.stride), pair(m.dilation)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                p = (0, 0)
            elif all(d[i] * (k[i] - 1) % 2 == 0 for i in range(2)):
                p = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
            else:
                raise Refused("asymmetric 'same' padding")
        else:
            p = pair(m.padding)
        out = (m.out_channels, *(conv_out(shape[1 + i], k[i], s[i], p[i], d[i]) for i in range(2)))
        return builder.add(cls(m.weight, m.bias, s, p, d, m.groups, shape, out), (src,), out, label)

    def _apply(self, x: Tensor, weight: Tensor) -> Tensor:
        x, lead = flat_bs(x, x.dim() - 3)
        y = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)
        return y.reshape(*lead, *y.shape[1:])

    def add_bias(self, y: Tensor) -> Tensor:
        return y if self.bias is None else y + self.bias.view(-1, 1, 1)

    def transpose(self, a: Tensor) -> Tensor:
        flat, lead = flat_bs(a)
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

    def unit_rows(self, ids: Tensor, in_shape: Shape) -> tuple[Tensor, Tensor]:
        """Row ``(o, i, j)`` is kernel ``o`` placed at the window of output position ``(i, j)``:
        its entries are scattered into a zero-padded canvas that is then cropped."""
        w = self.weight  # (C_out, C_in / groups, kh, kw)
        c_out, cin_g, kh, kw = w.shape
        c_in, h, wd = in_shape
        _, h_out, w_out = self.out_shape
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        hp, wp = h + 2 * ph, wd + 2 * pw
        o = ids // (h_out * w_out)
        i = (ids // w_out) % h_out
        j = ids % w_out
        group = o // (c_out // self.groups)
        base = (group * cin_g) * (hp * wp) + (i * sh) * wp + j * sw  # (B, R)
        dev = ids.device
        off = (torch.arange(cin_g, device=dev).view(-1, 1, 1) * (hp * wp)
               + torch.arange(kh, device=dev).view(1, -1, 1) * (dh * wp)
               + torch.arange(kw, device=dev).view(1, 1, -1) * dw).flatten()
        canvas = w.new_zeros(*ids.shape, c_in * hp * wp)
        canvas.scatter_(2, base.unsqueeze(-1) + off, w.flatten(1)[o])
        coef = canvas.view(*ids.shape, c_in, hp, wp)[..., ph : ph + h, pw : pw + wd]
        bias = self.bias[o] if self.bias is not None else coef.new_zeros(ids.shape)
        return coef, bias


class AvgPoolOp(ConvOp):
    """Average pooling: a depthwise :class:`ConvOp` whose kernels are the constant
    ``1 / (kh kw)`` (no bias)."""

    kind = "AvgPool2d"

    @classmethod
    def compile(cls, m: nn.Module, builder: Builder, src: int, label: str) -> int:
        shape = builder.shape(src)
        if len(shape) != 3:
            raise Refused(f"per-sample input shape {shape}")
        c, h, w = shape
        if type(m) is nn.AdaptiveAvgPool2d:
            size = m.output_size  # an int, or a pair whose None entries keep the input size
            oh, ow = (size, size) if isinstance(size, int) else tuple(size)
            oh, ow = oh or h, ow or w
            if h % oh or w % ow:
                raise Refused(f"{h}x{w} is not a multiple of {oh}x{ow}")
            k = s = (h // oh, w // ow)
            p = (0, 0)
        else:
            k = pair(m.kernel_size)
            s = pair(m.stride or m.kernel_size)
            p = pair(m.padding)
            if m.ceil_mode or m.divisor_override is not None or (
                any(p) and not m.count_include_pad
            ):
                raise Refused("ceil_mode, divisor_override or count_include_pad")
        like = builder.like
        kw = {"dtype": like.dtype, "device": like.device} if like is not None else {}
        weight = torch.full((c, 1, *k), 1.0 / (k[0] * k[1]), **kw)
        out = (c, *(conv_out(shape[1 + i], k[i], s[i], p[i], 1) for i in range(2)))
        return builder.add(cls(weight, None, s, p, (1, 1), c, shape, out), (src,), out, label)

    def unit_rows(self, ids: Tensor, in_shape: Shape) -> None:
        """None: the dense backward step (a pooling window has few taps and no bias)."""
        return None
