"""Reference outputs of other libraries' corruption code, written once as test data.

tests/test_corruptions_golden.py compares robustlab's corruptions against these arrays, so the
check is independent of robustlab's own code: every array here is computed by the reference
implementation of the published definition, never by robustlab.

* ``imagecorruptions`` (Hendrycks & Dietterich, ICLR 2019, packaged as ``imagecorruptions-imaug``)
  for the deterministic ImageNet-C corruptions: brightness, contrast, saturate, JPEG and pixelate
  on a 32 px RGB image (parameters without a unit of length, so the image size does not matter),
  and defocus, Gaussian and zoom blur on the same image enlarged 7x to 224 px, the reference size
  at which their pixel radii equal the published table (stored on the grid ``[::7, ::7]``).
* scikit-image's ``feature.canny`` (the call MNIST-C makes, Mu & Gilmer 2019) on three 28 px gray
  images: a digit, the digit at 30 % contrast, a natural crop.

Run in the benchmark venv (see docs/benchmarks.md), which has the reference packages:

    .bench-venv/bin/python bench/imagecorruptions_reference.py \
        --out tests/data/imagecorruptions_reference.npz
"""

from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np

DETERMINISTIC_32 = ("brightness", "contrast", "saturate", "jpeg_compression", "pixelate")
# Zoom blur has no unit of length, but the reference crops whole pixels before zooming (at 32 px
# its 1.01x zoom is the identity), so it is compared at 224 px too.
DETERMINISTIC_224 = ("defocus_blur", "gaussian_blur", "zoom_blur")
ENLARGE = 7  # 32 px * 7 = 224 px, the ImageNet-C reference size


def test_image() -> np.ndarray:
    """A 32 x 32 RGB uint8 image with what the colour corruptions must handle: smooth colour
    gradients, saturated primaries, gray pixels (no hue), pure black and pure white."""
    t = (np.arange(32) + 0.5) / 32
    yy, xx = np.meshgrid(t, t, indexing="ij")
    img = np.stack([0.15 + 0.7 * xx, 0.2 + 0.6 * yy, 0.5 + 0.4 * np.sin(6 * xx + 4 * yy)], -1)
    disc = (xx - 0.35) ** 2 + (yy - 0.6) ** 2 < 0.04
    img[disc] = (0.9, 0.15, 0.1)
    img[2:8, 20:26] = (0.5, 0.5, 0.5)  # gray: saturation 0
    img[24:30, 24:30] = (0.0, 0.0, 0.0)  # black: value 0
    img[24:30, 2:8] = (1.0, 1.0, 1.0)
    img[10:14, 26:30] = (0.1, 0.8, 0.2)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def digit_image() -> np.ndarray:
    """A 28 x 28 uint8 MNIST-like digit: a ring and a bar, soft-edged as real strokes are."""
    t = np.arange(28) + 0.5 - 14
    r = np.hypot(t[:, None], t[None, :])
    ring = np.clip(2.5 - np.abs(r - 8), 0, 1)
    bar = np.clip(1.5 - np.abs(t[None, :] - 3), 0, 1) * (np.abs(t[:, None]) < 10)
    return np.round(np.clip(ring + bar, 0, 1) * 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("tests/data/imagecorruptions_reference.npz"))
    args = ap.parse_args()

    from imagecorruptions import corrupt
    from skimage.feature import canny

    x32 = test_image()
    x224 = np.repeat(np.repeat(x32, ENLARGE, 0), ENLARGE, 1)
    arrays: dict[str, np.ndarray] = {"input_32": x32}
    for name in DETERMINISTIC_32:
        arrays[name] = np.stack([corrupt(x32, severity=s, corruption_name=name)
                                 for s in range(1, 6)])
    for name in DETERMINISTIC_224:
        arrays[name] = np.stack([corrupt(x224, severity=s, corruption_name=name)[::ENLARGE,
                                                                                 ::ENLARGE]
                                 for s in range(1, 6)])
    digit = digit_image()
    arrays["digit_28"] = digit
    # Canny inputs: the digit, the same at 30 % contrast and a gray natural crop (weak edges, so
    # the hysteresis thresholds matter). MNIST-C calls feature.canny(x) with its defaults.
    gray = np.round(x32[:28, :28] @ np.array([0.2989, 0.5870, 0.1140])).astype(np.uint8)
    inputs = np.stack([digit, np.round(digit * 0.3).astype(np.uint8), gray])
    arrays["canny_inputs_28"] = inputs
    arrays["canny_28"] = np.stack([canny(im / 255.0) for im in inputs]).astype(np.uint8)
    meta = {
        "command": "bench/imagecorruptions_reference.py --out " + str(args.out),
        "imagecorruptions-imaug": version("imagecorruptions-imaug"),
        "scikit-image": version("scikit-image"),
        "opencv-python": version("opencv-python"),
        "pillow": version("pillow"),
        "scipy": version("scipy"),
        "numpy": version("numpy"),
        "layout": "RGB corruptions: (severity 1-5, H, W, 3) uint8 as imagecorruptions.corrupt"
                  " returns them; 224 px ones sampled on [::7, ::7] of the 7x enlarged input_32",
    }
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(json.dumps(meta, indent=1), {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main()
