"""Every corruption against something robustlab did not compute: the reference package's output,
a formula written here from the paper's definition, or a property that definition implies.

* The reference code (Hendrycks & Dietterich, ICLR 2019: the ``imagecorruptions`` package; MNIST-C,
  Mu & Gilmer 2019: scikit-image's ``canny``), arrays written once by
  bench/imagecorruptions_reference.py into tests/data/imagecorruptions_reference.npz:
  brightness, contrast, saturate, jpeg-compression, pixelate, defocus-blur, gaussian-blur,
  zoom-blur, mnist-canny-edges.
* Another library computing the definition here: pixelate (Pillow's BOX then NEAREST resize),
  gaussian-blur (scipy.ndimage.gaussian_filter, the size-scaled sigma), mnist-shear,
  mnist-rotate, mnist-scale, mnist-translate (scipy.ndimage.map_coordinates of the inverse map).
* The definition written here with the same random numbers, and its distribution:
  gaussian-noise, speckle-noise (clip(x + c N) and clip(x + x c N); clipped fraction Phi(-x/c)),
  shot-noise (Poisson(c x) / c: moments and pmf), impulse-noise (salt and pepper rates).
* Bounds the published formula implies: fog, frost, snow, spatter, dotted line, zigzag, and the
  blurs and warps that average or move pixels keep a constant image constant.

Shape, range, dtype, determinism under a seed and severity monotonicity of every corruption are
checked in tests/test_corruptions.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from robustlab.corruptions import CORRUPTIONS, corrupt

REFERENCE = Path(__file__).parent / "data" / "imagecorruptions_reference.npz"
SEVERITIES = (1, 2, 3, 4, 5)
GRAY = 1 / 255


@pytest.fixture(scope="module")
def ref():
    with np.load(REFERENCE) as d:
        return {k: d[k] for k in d.files}


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) or (H, W) -> float (1, C, H, W) in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(a)).float() / 255
    return t.permute(2, 0, 1)[None] if t.dim() == 3 else t[None, None]


def to_array(t: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) -> (H, W, 3) float64 in [0, 255]."""
    return t[0].permute(1, 2, 0).double().numpy() * 255


# ----------------------------------------------------------------------------- reference package
# Tolerances in gray levels: the reference returns uint8 (truncated or rounded), so an exact
# match is within one level. Where the reference's algorithm differs in detail, the bound is on
# the mean over the image, and a looser one on the worst pixel.
AT_224 = {"defocus_blur", "gaussian_blur", "zoom_blur"}
EXACT = {"brightness", "contrast", "saturate", "pixelate", "gaussian_blur"}
APPROXIMATE = {  # name: (mean, max) |ours - reference| in gray levels
    # libjpeg's integer DCT and fancy upsampling vs the tensor codec: a few edge pixels differ.
    "jpeg_compression": (2.0, 48.0),
    # supersampled disk vs the reference's aliased disk + 3x3 Gaussian; reflected vs replicated
    # borders.
    "defocus_blur": (1.5, 6.0),
    # the reference crops whole pixels before zooming, so its centre is off by < 1 px.
    "zoom_blur": (2.0, 48.0),
}


def test_reference_file_names_its_generator(ref):
    meta = json.loads(str(ref["meta"]))
    assert meta["command"].startswith("bench/imagecorruptions_reference.py")
    assert "imagecorruptions-imaug" in meta


@pytest.mark.parametrize("name", sorted(EXACT | set(APPROXIMATE)))
def test_matches_imagecorruptions(ref, name):
    """Severities 1-5 against the imagecorruptions package on the same uint8 image; the blurs at
    224 px (7x enlarged), where their pixel radii are the published ones."""
    x = to_tensor(ref["input_32"])
    at_224 = name in AT_224
    if at_224:
        x = x.repeat_interleave(7, 2).repeat_interleave(7, 3)
    for s in SEVERITIES:
        y = corrupt(x, name.replace("_", "-"), s)
        if at_224:
            y = y[..., ::7, ::7]
        diff = np.abs(to_array(y) - ref[name][s - 1].astype(np.float64))
        if name in EXACT:
            assert diff.max() <= 1.0 + 1e-3, (name, s, diff.max())
        else:
            mean, worst = APPROXIMATE[name]
            assert diff.mean() <= mean and diff.max() <= worst, (name, s, diff.mean(), diff.max())


def test_canny_matches_skimage(ref):
    """MNIST-C's canny edges (severity 5: the edge map alone) against skimage.feature.canny on a
    digit, the digit at 30 % contrast and a natural crop: at least 95 % of the reference edges
    are found, and the two maps overlap by at least 80 % (IoU)."""
    for img, want in zip(ref["canny_inputs_28"], ref["canny_28"]):
        ours = corrupt(to_tensor(img), "mnist-canny-edges", 5)[0, 0].numpy() > 0.5
        theirs = want.astype(bool)
        assert theirs.sum() > 50
        assert (ours & theirs).sum() >= 0.95 * theirs.sum()
        assert (ours & theirs).sum() >= 0.8 * (ours | theirs).sum()


# ----------------------------------------------------------------------------- other libraries
def test_pixelate_is_pillow_box_then_nearest():
    """ImageNet-C pixelate: ``resize((w c, h c), BOX)`` then ``resize((w, h), NEAREST)``, with the
    published factors, on odd, non-square and gray images."""
    g = np.random.default_rng(0)
    for shape in ((45, 37, 3), (28, 28), (72, 90, 3)):  # (72, 90): the interpolate path
        img = g.integers(0, 256, shape, dtype=np.uint8)
        h, w = shape[:2]
        for s, c in zip(SEVERITIES, (0.6, 0.5, 0.4, 0.3, 0.25)):
            pil = Image.fromarray(img).resize((int(w * c), int(h * c)), Image.BOX)
            want = np.asarray(pil.resize((w, h), Image.NEAREST), dtype=np.float64)
            y = corrupt(to_tensor(img), "pixelate", s)[0]
            got = (y.permute(1, 2, 0) if y.shape[0] == 3 else y[0]).double().numpy() * 255
            assert np.abs(got - want).max() <= 1.0 + 1e-3, (shape, s)  # Pillow rounds per pass


def test_gaussian_blur_is_scipy_filter_with_scaled_sigma():
    """Gaussian blur with the published sigma (1, 2, 3, 4, 6 px at 224 px) times size / 224, edges
    replicated ('nearest'), truncated at 4 sigma: scipy's definition."""
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    for s, sigma in zip(SEVERITIES, (1, 2, 3, 4, 6)):
        want = ndimage.gaussian_filter(x[0].double().numpy(), (0, sigma * 40 / 224, sigma * 40 / 224),
                                       mode="nearest", truncate=4.0)
        assert np.abs(corrupt(x, "gaussian-blur", s)[0].numpy() - want).max() < 3e-5, s


def _warp_candidates(img: np.ndarray, name: str, c: float) -> list[np.ndarray]:
    """MNIST-C's ``skimage.transform.warp(x, inverse_map=AffineTransform(...))`` about the centre
    (13.5, 13.5), bilinear, zero outside, for each random direction the definition allows."""
    if name == "mnist-translate":
        options = [(np.eye(2), np.array([sx * c, sy * c])) for sx in (-1, 1) for sy in (-1, 1)]
    elif name == "mnist-scale":
        options = [(np.eye(2) * c, np.zeros(2))]
    else:
        options = []
        for sign in (-1, 1):
            a = sign * c
            if name == "mnist-shear":  # skimage < 0.19: [[1, -sin(shear)], [0, cos(shear)]]
                m = np.array([[1.0, -math.sin(a)], [0.0, math.cos(a)]])
            else:  # rotation
                m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            options.append((m, np.zeros(2)))
    rows, cols = np.mgrid[0:28, 0:28].astype(np.float64)
    p = np.stack([cols.ravel(), rows.ravel()]) - 13.5  # (col, row) about the centre
    out = []
    for m, t in options:
        q = m @ p + 13.5 + t[:, None]
        out.append(ndimage.map_coordinates(img, [q[1], q[0]], order=1, mode="grid-constant",
                                           cval=0.0).reshape(28, 28))
    return out


@pytest.mark.parametrize("name, table", [
    ("mnist-shear", (0.2, 0.4, 0.6, 0.8, 1.0)),
    ("mnist-rotate", (0.2, 0.4, 0.6, 0.8, 1.0)),
    ("mnist-scale", tuple(1 / f for f in (0.9, 0.8, 0.7, 0.6, 0.5))),
    ("mnist-translate", (1, 2, 3, 4, 5)),
])
def test_mnist_affine_is_the_published_inverse_map(ref, name, table):
    img = ref["digit_28"].astype(np.float64) / 255
    x = to_tensor(ref["digit_28"])
    for s, c in zip(SEVERITIES, table):
        for seed in (0, 1):
            got = corrupt(x, name, s, seed=seed)[0, 0].double().numpy()
            err = min(np.abs(got - w).max() for w in _warp_candidates(img, name, c))
            assert err < 1e-4, (name, s, seed, err)


# ----------------------------------------------------------------------------- noise
def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


GAUSS = (0.08, 0.12, 0.18, 0.26, 0.38)
SPECKLE = (0.15, 0.2, 0.35, 0.45, 0.6)


def test_gaussian_and_speckle_noise_definition():
    """clip(x + c N) and clip(x + x c N) with N drawn from the seeded generator (the published
    formulas, the same normals); on x = 1/2 the clipped-to-0 fraction is Phi(-x / c) resp.
    Phi(-1 / c)."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    half = torch.full((4, 3, 32, 32), 0.5)
    for s in SEVERITIES:
        for name, c, mult in (("gaussian-noise", GAUSS[s - 1], False),
                              ("speckle-noise", SPECKLE[s - 1], True)):
            n = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
            want = (x + (x if mult else 1) * c * n).clamp(0, 1)
            assert torch.allclose(corrupt(x, name, s, seed=9), want, atol=1e-6), (name, s)
            y = corrupt(half, name, s, seed=s)
            p0 = _phi(-1 / c) if mult else _phi(-0.5 / c)
            assert abs(float((y == 0).float().mean()) - p0) < 0.012, (name, s)
            assert abs(float((y == 1).float().mean()) - p0) < 0.012, (name, s)
    d = corrupt(half, "gaussian-noise", 1, seed=0) - half
    assert abs(float(d.std()) - 0.08) < 0.003 and abs(float(d.mean())) < 0.003


@pytest.mark.parametrize("name", ["shot-noise", "mnist-shot-noise"])
def test_shot_noise_is_poisson(name):
    """Poisson(c x) / c, c = 60, 25, 12, 5, 3 photons: on x = 1/2 the counts have mean and variance
    c / 2; at c = 3 their pmf is Poisson(1.5), counts >= 3 clipped to 1."""
    half = torch.full((4, 3, 32, 32), 0.5)
    for s, c in zip(SEVERITIES, (60, 25, 12, 5, 3)):
        k = corrupt(half, name, s, seed=s) * c
        assert torch.allclose(k, k.round(), atol=1e-4), "counts are integers"
        if s <= 3:  # no clipping within 5 standard deviations
            assert abs(float(k.mean()) - c / 2) < 0.05 * c / 2 + 0.05
            assert abs(float(k.var()) - c / 2) < 0.08 * c / 2
    k = (corrupt(half, name, 5, seed=0) * 3).round()
    lam = 1.5
    for j in (0, 1, 2):
        pmf = math.exp(-lam) * lam**j / math.factorial(j)
        assert abs(float((k == j).float().mean()) - pmf) < 0.012, j
    assert abs(float((k == 3).float().mean()) - (1 - sum(
        math.exp(-lam) * lam**j / math.factorial(j) for j in range(3)))) < 0.012


@pytest.mark.parametrize("name", ["impulse-noise", "mnist-impulse-noise"])
def test_impulse_noise_rates(name):
    """skimage's salt and pepper: a fraction c (0.03-0.27) of the values becomes 0 or 1, half
    each; every other value is unchanged."""
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 0.8 + 0.1
    for s, c in zip(SEVERITIES, (0.03, 0.06, 0.09, 0.17, 0.27)):
        y = corrupt(x, name, s, seed=s)
        salt, pepper = (y == 1), (y == 0)
        assert abs(float(salt.float().mean()) - c / 2) < 0.01, s
        assert abs(float(pepper.float().mean()) - c / 2) < 0.01, s
        assert torch.equal(y[~(salt | pepper)], x[~(salt | pepper)])


def test_contrast_keeps_means_and_scales_deviations():
    """(x - mean) c + mean: each channel's mean is kept and its std multiplied by c."""
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(5))
    for s, c in zip(SEVERITIES, (0.4, 0.3, 0.2, 0.1, 0.05)):
        y = corrupt(x, "contrast", s)
        assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=1e-6)
        assert torch.allclose(y.std((2, 3)), c * x.std((2, 3)), atol=1e-6)


# ----------------------------------------------------------------------------- bounds
def natural(c: int, size: int = 32) -> torch.Tensor:
    """Smooth colour field in [0.1, 0.9] (values clear of both clipping ends)."""
    g = torch.Generator().manual_seed(6)
    base = torch.rand(2, c, 4, 4, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear") * 0.8 + 0.1


FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))


@pytest.mark.parametrize("name", ["fog", "mnist-fog"])
def test_fog_bounds_and_linearity(name):
    """ImageNet-C fog: y = (x + c0 F) M / (M + c0), F a plasma fractal in [0, 1] drawn from the
    seed alone, M = max x. So y (M + c0) / M - x lies in [0, c0], and two images with the same
    maximum and seed differ by (x1 - x2) M / (M + c0)."""
    for x in (natural(3), natural(1)):
        top = x.amax(dim=(1, 2, 3), keepdim=True)
        x2 = x.flip(-1)  # same maximum, other content
        for s, (c0, _) in zip(SEVERITIES, FOG):
            y = corrupt(x, name, s, seed=s)
            f = y * (top + c0) / top - x
            assert float(f.min()) >= -1e-5 and float(f.max()) <= c0 + 1e-5, (s, f.min(), f.max())
            assert float(f.max() - f.min()) > 0.1 * c0, "the fractal varies"
            d = y - corrupt(x2, name, s, seed=s)
            assert torch.allclose(d, (x - x2) * top / (top + c0), atol=1e-5), s


def test_frost_bounds_and_linearity():
    """y = c0 x + c1 T with a frost texture T in [0, 1] drawn from the seed alone (clipped at 1):
    T is in [0, 1], and two images under the same seed differ by c0 (x1 - x2) where unclipped."""
    x = natural(3)
    for s, (c0, c1) in zip(SEVERITIES, ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7),
                                        (0.6, 0.75))):
        y = corrupt(x, "frost", s, seed=s)
        t = (y - c0 * x) / c1
        assert float(t.min()) >= -1e-5 and float(t[y < 1].max()) <= 1 + 1e-5, s
        y2 = corrupt(x * 0.5, "frost", s, seed=s)
        free = (y < 1) & (y2 < 1)
        assert torch.allclose((y - y2)[free], (c0 * 0.5 * x)[free], atol=1e-5), s


def test_snow_never_darkens():
    """y = clip(k x + (1 - k) max(x, 1.5 L + 0.5) + S + rot180(S)), S >= 0: at least the
    brightened base (L: BT.601 luma, k = 0.8, 0.7, 0.7, 0.65, 0.55)."""
    x = natural(3)
    luma = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    for s, k in zip(SEVERITIES, (0.8, 0.7, 0.7, 0.65, 0.55)):
        base = (k * x + (1 - k) * torch.maximum(x, 1.5 * luma + 0.5)).clamp(max=1)
        assert float((corrupt(x, "snow", s, seed=s) - base).min()) >= -2e-3, s


@pytest.mark.parametrize("name", ["spatter", "mnist-spatter"])
def test_spatter_bounds(name):
    """Water (ImageNet-C severities 1-3) adds a non-negative colour: y >= x. Mud (4-5, and every
    MNIST-C severity) is x (1 - m) + mud m, m in [0, 1]: y lies between x and the mud colour
    (63, 42, 20) / 255, gray 63 / 255 in MNIST-C."""
    for x in (natural(3), natural(1)):
        for s in SEVERITIES:
            y = corrupt(x, name, s, seed=s)
            if name == "spatter" and s <= 3:
                assert float((y - x).min()) >= -1e-6, s
                continue
            rgb = (63 / 255,) * 3 if name == "mnist-spatter" else (63 / 255, 42 / 255, 20 / 255)
            mud = torch.tensor(rgb).view(1, 3, 1, 1)
            if x.shape[1] == 1:
                mud = (mud[0, :, 0, 0] * torch.tensor([0.2989, 0.587, 0.114])).sum().view(1, 1, 1, 1)
            assert bool((y >= torch.minimum(x, mud) - 1e-5).all()), (s, x.shape)
            assert bool((y <= torch.maximum(x, mud) + 1e-5).all()), (s, x.shape)
            assert float((y - x).abs().max()) > 0.05


@pytest.mark.parametrize("name", ["mnist-dotted-line", "mnist-zigzag"])
def test_lines_only_add_ink(name):
    x = to_tensor((np.arange(28 * 28).reshape(28, 28) % 97).astype(np.uint8))
    for s in SEVERITIES:
        y = corrupt(x, name, s, seed=s)
        assert float((y - x).min()) >= 0 and float((y - x).max()) > 0.5, s


AVERAGING = ("defocus-blur", "gaussian-blur", "motion-blur", "zoom-blur", "glass-blur",
             "elastic-transform", "mnist-glass-blur", "mnist-motion-blur")


@pytest.mark.parametrize("name", AVERAGING)
def test_blur_keeps_constant_image(name):
    """Normalised kernels and resampling with replicated / reflected borders: a constant image is
    a fixed point at every severity."""
    x = torch.full((2, 3, 24, 24), 0.37)
    for s in SEVERITIES:
        assert float((corrupt(x, name, s, seed=s) - x).abs().max()) < 1e-5, s


# ----------------------------------------------------------------------------- coverage
IN_TEST_CORRUPTIONS_PY = {"mnist-brightness", "mnist-stripe"}  # closed forms there


def test_every_corruption_has_an_independent_check():
    checked = {n.replace("_", "-") for n in EXACT | set(APPROXIMATE)} | {
        "mnist-canny-edges", "mnist-shear", "mnist-rotate", "mnist-scale", "mnist-translate",
        "gaussian-noise", "speckle-noise", "shot-noise", "mnist-shot-noise", "impulse-noise",
        "mnist-impulse-noise", "fog", "mnist-fog", "frost", "snow", "spatter", "mnist-spatter",
        "mnist-dotted-line", "mnist-zigzag", *AVERAGING, *IN_TEST_CORRUPTIONS_PY}
    assert set(CORRUPTIONS.names()) <= checked, set(CORRUPTIONS.names()) - checked
