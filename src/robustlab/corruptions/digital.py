"""Digital corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019): brightness, contrast,
elastic transform, pixelate, JPEG compression, and the extra saturate."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from robustlab.corruptions import functional as Fn
from robustlab.corruptions.base import IMAGENET_C_SIZE, Context, register
from robustlab.corruptions.jpeg import jpeg_roundtrip


def brightness(x: Tensor, c: float, ctx: Context) -> Tensor:
    """Add ``c`` to the HSV value channel (hue and saturation fixed).

    With hue and saturation fixed, RGB is proportional to V, so the HSV round trip reduces to
    scaling each pixel by V'/V (a black pixel becomes the gray level V')."""
    if x.shape[1] == 1:
        return x + c
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp_(max=1.0)
    return (x * (v_new / v.clamp_min(1e-12))).where(v > 0, v_new.expand_as(x))


def contrast(x: Tensor, c: float, ctx: Context) -> Tensor:
    """Shrink deviations from each channel's spatial mean by the factor ``c``."""
    m = x.mean(dim=(2, 3), keepdim=True)
    return torch.add(m * (1 - c), x, alpha=c)  # (x - m) c + m in one pass


def saturate(x: Tensor, p: tuple[float, float], ctx: Context) -> Tensor:
    """HSV saturation S -> clip(S * p[0] + p[1]). A gray image has no hue and stays unchanged
    (as in the reference, which converts gray to RGB, applies the change, and keeps channel 0).

    With hue and value fixed, HSV -> RGB is ``rgb = V - V S f(H)``, so a new saturation S' gives
    ``rgb' = V - (S' / S) (V - rgb)`` without leaving RGB (equal to the HSV round trip up to float
    rounding). Colourless pixels (S = 0, hue 0 by convention) become ``V - V S' (0, 1, 1)``."""
    if x.shape[1] == 1:
        return x.clone()
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * p[0] + p[1]).clamp_(0, 1)
    coloured = v - (s_new / s.clamp_min(1e-30)) * (v - x)
    red_hue = v - v * s_new * x.new_tensor([0.0, 1.0, 1.0]).view(1, 3, 1, 1)
    return torch.where(delta > 0, coloured, red_hue)


# Elastic transform, parameterised as in the imagecorruptions package at 224 px: white noise
# U(-1.12, 1.12) px (0.005 * 224), Gaussian-smoothed with sigma 2.24 px (0.01 * 224, truncate 3,
# reflected borders), times alpha.
ELASTIC_MAX = 0.005 * IMAGENET_C_SIZE
ELASTIC_SIGMA = 0.01 * IMAGENET_C_SIZE


def elastic_transform(x: Tensor, alpha: float, ctx: Context) -> Tensor:
    """Resample at p + d(p), with d a smooth random displacement field (Simard et al. 2003)."""
    n, _, h, w = x.shape
    noise = ctx.uniform(-1.0, 1.0, n, 2, h, w)
    field = Fn.smooth_noise(noise, ELASTIC_SIGMA, ctx, truncate=3.0, mode="reflect")
    d = field.mul_(alpha * ELASTIC_MAX * ctx.scale)  # pixels of this image
    unit = x.new_tensor([2.0 / w, 2.0 / h])
    grid = Fn._base_grid(n, h, w, x.device) + d.permute(0, 2, 3, 1)[..., [1, 0]] * unit
    return Fn.sample(x, grid, padding="reflection")


def pixelate(x: Tensor, c: float, ctx: Context) -> Tensor:
    """Box-downsample to ``int(size * c)`` (PIL's BOX filter: the mean of the inputs whose centre
    falls in each output's window) and upsample back with nearest neighbours (PIL's NEAREST), as
    the reference's two PIL resizes. Small images upsample by two index gathers, large ones by
    ``interpolate`` where it picks the same source pixels as Pillow (checked per size; faster on
    CPU for each, measured in bench/corruption_speed.py)."""
    h, w = x.shape[2:]
    mh, mw = max(int(h * c), 1), max(int(w * c), 1)
    small = _box_matrix(h, mh).to(x) @ x @ _box_matrix(w, mw).T.to(x)
    if h * w > GATHER_MAX_AREA and _interpolate_is_pillow(h, mh) and _interpolate_is_pillow(w, mw):
        return Fn.resize(small, (h, w), mode="nearest-exact")
    return small.index_select(3, _nearest_index(w, mw).to(x.device)).index_select(
        2, _nearest_index(h, mh).to(x.device))


GATHER_MAX_AREA = 64 * 64


@functools.lru_cache(maxsize=256)
def _nearest_index(n: int, m: int) -> Tensor:
    """Source index of each of ``n`` outputs when upsampling ``m`` samples with PIL's NEAREST:
    ``int(p)`` at ``p = s/2, s/2 + s, ...`` (s = m/n), accumulated in float64 as Pillow does,
    so an exact tie (p an integer) goes wherever Pillow's rounding sends it."""
    step, p, out = m / n, 0.0 + (m / n) * 0.5, []
    for _ in range(n):
        out.append(min(int(p), m - 1))
        p += step
    return torch.tensor(out, dtype=torch.long)


@functools.lru_cache(maxsize=256)
def _interpolate_is_pillow(n: int, m: int) -> bool:
    """Whether ``interpolate(mode='nearest-exact')`` from ``m`` to ``n`` samples picks Pillow's
    source pixels (a run-time comparison on an index ramp)."""
    ramp = torch.arange(m, dtype=torch.float32).view(1, 1, 1, m)
    got = Fn.resize(ramp, (1, n), mode="nearest-exact").view(n).long()
    return torch.equal(got, _nearest_index(n, m))


def _box_matrix(n: int, m: int) -> Tensor:
    """(m, n) averaging matrix of PIL's BOX filter (m <= n): output i is the mean of the inputs j
    whose centre j + 1/2 lies in (i s, (i+1) s], s = n/m, each at weight 1. Pillow's float64
    tests are kept as they are (its window bounds round, so an input whose centre falls exactly
    on a window edge can count for neither output), since the reference resizes with Pillow."""
    s = n / m
    centre = (torch.arange(m, dtype=torch.float64)[:, None] + 0.5) * s
    lo, hi = (centre - 0.5 * s + 0.5).floor_(), (centre + 0.5 * s + 0.5).floor_()
    j = torch.arange(n, dtype=torch.float64)[None, :]
    t = (j - centre + 0.5) * (1.0 / s)
    inside = ((j >= lo) & (j < hi) & (t > -0.5) & (t <= 0.5)).double()
    return (inside / inside.sum(1, keepdim=True).clamp_min(1.0)).float()


def jpeg_compression(x: Tensor, quality: int, ctx: Context) -> Tensor:
    """JPEG round trip at ``quality`` (tensor codec, see :mod:`robustlab.corruptions.jpeg`)."""
    return jpeg_roundtrip(x, quality)


REF = IMAGENET_C_SIZE
register("brightness", brightness, [0.1, 0.2, 0.3, 0.4, 0.5], reference=REF,
         doc="HSV value + 0.1-0.5 (ImageNet-C).")
register("contrast", contrast, [0.4, 0.3, 0.2, 0.1, 0.05], reference=REF,
         doc="Contrast reduced to 40-5 % around the channel mean (ImageNet-C).")
register("saturate", saturate, [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)], reference=REF,
         doc="HSV saturation scaled 0.3x-20x (ImageNet-C extra; gray images unchanged).")
register("elastic-transform", elastic_transform, [250 * a for a in (0.05, 0.065, 0.085, 0.1, 0.12)],
         reference=REF, doc="Smooth random elastic displacement field (ImageNet-C).")
register("pixelate", pixelate, [0.6, 0.5, 0.4, 0.3, 0.25], reference=REF,
         doc="Box downsampling to 60-25 % and nearest upsampling (ImageNet-C).")
register("jpeg-compression", jpeg_compression, [25, 18, 15, 10, 7], reference=REF,
         doc="JPEG round trip at quality 25-7, tensor codec (ImageNet-C).")
