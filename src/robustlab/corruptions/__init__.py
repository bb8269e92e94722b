"""Common corruptions as batched, seeded tensor operations (ImageNet-C, ImageNet-C extras, MNIST-C)
and the corruption-robustness metrics (CE, mCE, relative mCE, flip rate, calibration); the
evaluation loop is :func:`robustlab.evaluation.evaluate_corruptions`.

Every corruption is ``f(x, severity, generator=None) -> Tensor`` on (N, C, H, W) float batches in
[0, 1], registered by name in :data:`CORRUPTIONS`; :data:`CORRUPTION_SETS` groups them.
"""

# Importing the modules registers their corruptions in CORRUPTIONS.
from robustlab.corruptions import blur, digital, mnist_c, noise, weather  # noqa: F401
from robustlab.corruptions.base import (
    CORRUPTIONS,
    IMAGENET_C_SIZE,
    MNIST_C_SIZE,
    SEVERITIES,
    Corruption,
)
from robustlab.corruptions.export import gallery, write_corrupted_dataset
from robustlab.corruptions.metrics import (
    CorruptionResult,
    corruption_error,
    expected_calibration_error,
    flip_probability,
    mean_corruption_error,
    perturbation_sequence,
    relative_corruption_error,
)
from robustlab.corruptions.mnist_c import MNIST_C_BENCHMARK_SEVERITY
from robustlab.corruptions.sets import CORRUPTION_SETS, corrupt, corruption_names

__all__ = [
    "CORRUPTIONS",
    "CORRUPTION_SETS",
    "IMAGENET_C_SIZE",
    "MNIST_C_BENCHMARK_SEVERITY",
    "MNIST_C_SIZE",
    "SEVERITIES",
    "Corruption",
    "CorruptionResult",
    "corrupt",
    "corruption_error",
    "corruption_names",
    "expected_calibration_error",
    "flip_probability",
    "gallery",
    "mean_corruption_error",
    "perturbation_sequence",
    "relative_corruption_error",
    "write_corrupted_dataset",
]
