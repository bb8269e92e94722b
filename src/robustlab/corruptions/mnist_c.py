"""The 15 MNIST-C corruptions (Mu & Gilmer, 2019, "MNIST-C: A Robustness Benchmark for Computer
Vision"), reference size 28 px.

Shot and impulse noise, glass and motion blur, brightness, fog and spatter reuse the ImageNet-C
implementations with the MNIST-C tables at 28 px (fog: a 256 px fractal cropped to the image;
spatter: always mud, gray 63/255). Shear, scale, rotate and translate are inverse-mapped affine
warps about the image centre (bilinear, zero fill). Stripe, dotted line, zigzag and canny edges
have no severity in MNIST-C; robustlab gives them a 1-5 range whose benchmark setting is listed in
:data:`MNIST_C_BENCHMARK_SEVERITY`:

* stripe inverts a band of 5-25 % of the width at each side (benchmark: 25 %, severity 5);
* dotted line / zigzag draw ``severity`` random lines (benchmark: one, severity 1);
* canny edges blends the image with its Canny edge map, weight 0.2-1.0 (benchmark: the edge map
  alone, severity 5).

Drawing happens in the 28 x 28 reference frame, so lines keep their shape at every size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.corruptions import blur, digital, noise, weather
from robustlab.corruptions import functional as Fn
from robustlab.corruptions.base import MNIST_C_SIZE, Context, register

REF = MNIST_C_SIZE

# Severity at which the released MNIST-C dataset applies each corruption.
MNIST_C_BENCHMARK_SEVERITY: dict[str, int] = {
    "mnist-shot-noise": 5, "mnist-impulse-noise": 4, "mnist-glass-blur": 1,
    "mnist-motion-blur": 1, "mnist-shear": 2, "mnist-scale": 3, "mnist-rotate": 2,
    "mnist-brightness": 5, "mnist-translate": 3, "mnist-stripe": 5, "mnist-fog": 5,
    "mnist-spatter": 4, "mnist-dotted-line": 1, "mnist-zigzag": 1, "mnist-canny-edges": 5,
}


# ----------------------------------------------------------------------------- affine
def _eye(n: int, device) -> Tensor:
    return torch.eye(2, device=device).expand(n, 2, 2).clone()


def shear(x: Tensor, c: float, ctx: Context) -> Tensor:
    """Horizontal shear by ``c`` radians with a random sign: inverse map [[1, -sin c], [0, cos c]]
    (skimage's AffineTransform(shear=c) of the reference)."""
    c = ctx.sign(x.shape[0]) * c
    a = _eye(x.shape[0], x.device)
    a[:, 0, 1] = -torch.sin(c)
    a[:, 1, 1] = torch.cos(c)
    return Fn.affine(x, a)


def rotate(x: Tensor, c: float, ctx: Context) -> Tensor:
    """Rotation by ``c`` radians with a random sign."""
    c = ctx.sign(x.shape[0]) * c
    cos, sin = torch.cos(c), torch.sin(c)
    a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1)
    return Fn.affine(x, a)


def scale(x: Tensor, c: float, ctx: Context) -> Tensor:
    """Shrink about the centre to ``1 / c`` of the size: the inverse map scales coordinates by
    ``c`` (MNIST-C's ``warp(x, inverse_map=AffineTransform(scale=c))``, c = 1/0.9 ... 1/0.5)."""
    return Fn.affine(x, _eye(x.shape[0], x.device) * c)


def translate(x: Tensor, c: float, ctx: Context) -> Tensor:
    """Shift by ``c`` reference pixels along each axis, each direction a random sign."""
    t = ctx.sign(x.shape[0], 2) * ctx.px(c)
    return Fn.affine(x, _eye(x.shape[0], x.device), t)


# ----------------------------------------------------------------------------- drawing
def _frame(x: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates (rows (H, 1), cols (1, W)) in the 28 x 28 reference frame."""
    h, w = x.shape[2:]
    rows = (torch.arange(h, device=x.device) + 0.5) * (REF / h) - 0.5
    cols = (torch.arange(w, device=x.device) + 0.5) * (REF / w) - 0.5
    return rows[:, None], cols[None, :]


def _line(rows: Tensor, cols: Tensor, seg: Tensor) -> Tensor:
    """Intensity (N, H, W) of one segment per image, ``seg`` (N, 4) = (c0, r0, c1, r1): a stroke
    whose intensity falls as 1 + log(1 - d / 2.3) with the vertical distance d from the line,
    drawn over the columns floor(c0) <= c < ceil(c1)."""
    c0, r0, c1, r1 = (v[:, None, None] for v in seg.unbind(1))
    flat = (c1 - c0).abs() < 1e-9
    slope = (r1 - r0) / torch.where(flat, torch.ones_like(c0), c1 - c0)
    dist = (rows - (slope * (cols - c0) + r0)).abs().clamp(max=2.3 - 1e-6)
    stroke = (torch.log1p(-dist / 2.3) + 1).clamp(0, 1)
    span = (cols >= torch.floor(c0)) & (cols < torch.ceil(c1)) & ~flat
    return stroke * span


def _draw(x: Tensor, segments: Tensor, mask: Tensor | None = None) -> Tensor:
    """Add strokes for ``segments`` (N, S, 4), optionally masked (H, W), to every channel."""
    rows, cols = _frame(x)
    ink = torch.zeros(x.shape[0], x.shape[2], x.shape[3], device=x.device)
    for s in range(segments.shape[1]):  # loop over strokes, each on the whole batch
        ink += _line(rows, cols, segments[:, s])
    if mask is not None:
        ink = ink * mask
    return x + ink[:, None]


def dotted_line(x: Tensor, lines: int, ctx: Context) -> Tensor:
    """``lines`` lines across the image between random rows, drawn in 2-pixel dashes."""
    n = x.shape[0]
    r = ctx.randint(0, REF - 1, n, lines, 2).float()
    c0 = torch.zeros(n, lines, device=x.device)
    seg = torch.stack([c0, r[..., 0], c0 + REF - 1, r[..., 1]], -1)
    _, cols = _frame(x)
    dashes = (torch.floor(cols / 2) % 2 == 1).float()
    return _draw(x, seg, dashes)


ZIG_A, ZIG_B = 2.0, 2.0  # half period along the line and amplitude across it (ref px)


def zigzag(x: Tensor, lines: int, ctx: Context) -> Tensor:
    """``lines`` zigzags from column 2 to 25 around a random slanted line (slope up to 5/23):
    vertices every 2 reference pixels along the line, alternately 2 px to either side."""
    n = x.shape[0]
    start, end = 2.0, 25.0
    r0 = ctx.randint(0, REF - 1, n, lines).float()
    r1 = r0 + ctx.randint(-5, 5, n, lines).float()
    theta = torch.atan((r1 - r0) / (end - start))
    length = (end - start) / torch.cos(theta)
    k = int(((end - start) / math.cos(math.atan(5 / 23)) / ZIG_A - 1) // 2) + 1
    i = torch.arange(k, device=x.device, dtype=torch.float32)
    along = torch.cat([torch.zeros(1, device=x.device), (2 * i + 1) * ZIG_A])
    across = torch.cat([torch.zeros(1, device=x.device), ZIG_B * (1 - 2 * (i % 2))])
    along = torch.minimum(along.expand(n, lines, -1), length[..., None])
    along = torch.cat([along, length[..., None]], -1)
    across = torch.cat([across.expand(n, lines, -1), torch.zeros(n, lines, 1, device=x.device)], -1)
    cos, sin = torch.cos(theta)[..., None], torch.sin(theta)[..., None]
    cs = start + along * cos - across * sin
    rs = r0[..., None] + along * sin + across * cos
    seg = torch.stack([cs[..., :-1], rs[..., :-1], cs[..., 1:], rs[..., 1:]], -1)
    return _draw(x, seg.reshape(n, -1, 4))


def stripe(x: Tensor, fraction: float, ctx: Context) -> Tensor:
    """Invert a band of ``fraction`` of the width at the left and at the right edge."""
    _, cols = _frame(x)
    band = ((cols < REF * fraction) | (cols >= REF * (1 - fraction))).float()
    return x + band * (1 - 2 * x)


# ----------------------------------------------------------------------------- canny
def canny(gray: Tensor, sigma: float, low: float, high: float) -> Tensor:
    """Canny edge map (N, 1, H, W) in {0, 1} (Canny, 1986): Gaussian smoothing, Sobel gradient,
    non-maximum suppression along the quantised gradient direction, hysteresis between ``low``
    and ``high`` (8-connected). ``gray`` must already be scaled so gradients are per reference
    pixel."""
    s = Fn.gaussian_blur(gray, sigma) if sigma > 0.05 else gray
    d = torch.tensor([-1.0, 0.0, 1.0], device=gray.device)
    m = torch.tensor([1.0, 2.0, 1.0], device=gray.device)
    gy = Fn.separable_conv(s, d, m)
    gx = Fn.separable_conv(s, m, d)
    mag = torch.hypot(gx, gy)
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180
    sector = torch.round(angle / 45).long() % 4  # 0: along cols, 1: diagonal, 2: rows, 3: anti
    pad = F.pad(mag, (1, 1, 1, 1))
    h, w = mag.shape[2:]

    def at(dr: int, dc: int) -> Tensor:
        return pad[:, :, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    pairs = [((0, 1), (0, -1)), ((1, 1), (-1, -1)), ((1, 0), (-1, 0)), ((1, -1), (-1, 1))]
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for q, (a, b) in enumerate(pairs):
        keep |= (sector == q) & (mag >= at(*a)) & (mag >= at(*b))
    keep[:, :, [0, -1], :] = False
    keep[:, :, :, [0, -1]] = False
    weak = keep & (mag >= low)
    edges = (weak & (mag >= high)).float()
    weak = weak.float()
    while True:  # grow strong edges through weak ones until nothing changes
        grown = F.max_pool2d(edges, 3, stride=1, padding=1) * weak
        if torch.equal(grown, edges):
            return edges
        edges = grown


def canny_edges(x: Tensor, alpha: float, ctx: Context) -> Tensor:
    """Blend with weight ``alpha`` towards the Canny edge map of the gray image (sigma 1, low and
    high thresholds 0.1 and 0.2: skimage's defaults, as in MNIST-C)."""
    gray = Fn.luminance(x) * ctx.scale  # gradients per reference pixel
    edges = canny(gray, ctx.px(1.0), 0.1, 0.2)
    return x * (1 - alpha) + edges * alpha


# ----------------------------------------------------------------------------- registry
def _mud_spatter(x: Tensor, p: tuple, ctx: Context) -> Tensor:
    return weather.spatter(x, p, ctx, mud_only=True, mud=(63 / 255,) * 3)


register("mnist-shot-noise", noise.shot_noise, [60, 25, 12, 5, 3], reference=REF,
         doc="MNIST-C shot noise (Poisson, 60-3 photons).")
register("mnist-impulse-noise", noise.impulse_noise, [0.03, 0.06, 0.09, 0.17, 0.27],
         reference=REF, doc="MNIST-C impulse (salt-and-pepper) noise.")
register("mnist-glass-blur", blur.glass_blur, blur.GLASS, reference=REF,
         doc="MNIST-C glass blur (ImageNet-C table at 28 px).")
register("mnist-motion-blur", blur.motion_blur, blur.MOTION, reference=REF,
         doc="MNIST-C motion blur (ImageNet-C table at 28 px).")
register("mnist-shear", shear, [0.2, 0.4, 0.6, 0.8, 1.0], reference=REF,
         doc="MNIST-C shear, 0.2-1.0 rad, random direction.")
register("mnist-scale", scale, [1 / 0.9, 1 / 0.8, 1 / 0.7, 1 / 0.6, 1 / 0.5], reference=REF,
         doc="MNIST-C scale: shrink to 90-50 % about the centre.")
register("mnist-rotate", rotate, [0.2, 0.4, 0.6, 0.8, 1.0], reference=REF,
         doc="MNIST-C rotation, 0.2-1.0 rad, random direction.")
register("mnist-brightness", digital.brightness, [0.1, 0.2, 0.3, 0.4, 0.5], reference=REF,
         doc="MNIST-C brightness: value + 0.1-0.5.")
register("mnist-translate", translate, [1, 2, 3, 4, 5], reference=REF,
         doc="MNIST-C translation by 1-5 px (at 28 px) along each axis.")
register("mnist-stripe", stripe, [0.05, 0.10, 0.15, 0.20, 0.25], reference=REF,
         doc="MNIST-C stripe: invert 5-25 % of the width at both sides.")
register("mnist-fog", weather.fog, weather.FOG, reference=REF,
         doc="MNIST-C fog: 256 px plasma fractal cropped to the image.")
register("mnist-spatter", _mud_spatter, weather.SPATTER, reference=REF,
         doc="MNIST-C spatter: gray mud drops.")
register("mnist-dotted-line", dotted_line, [1, 2, 3, 4, 5], reference=REF,
         doc="MNIST-C dotted line: 1-5 dashed lines across the image.")
register("mnist-zigzag", zigzag, [1, 2, 3, 4, 5], reference=REF,
         doc="MNIST-C zigzag: 1-5 zigzag lines.")
register("mnist-canny-edges", canny_edges, [0.2, 0.4, 0.6, 0.8, 1.0], reference=REF,
         doc="MNIST-C canny edges: blend 20-100 % towards the edge map.")
