"""The corruption registry, the severity scale and the size-scaling rule shared by every corruption.

A corruption is a function ``f(x, severity, generator=None) -> Tensor`` on a float batch
``(N, C, H, W)`` in [0, 1] with ``C`` in {1, 3}; it returns a batch of the same shape, dtype and
device, in [0, 1]. Severities run from 1 (mild) to 5 (strong).

**Randomness.** Every random number is drawn on the CPU from ``generator`` (a CPU
:class:`torch.Generator`; ``None`` uses torch's global generator) and then moved to the input's
device, so the same seed gives the same corruption on CPU and GPU.

**Size scaling.** Parameters that the reference implementations define in pixels (blur radii and
sigmas, displacement amplitudes, flake and texture sizes, line widths) are multiplied by
``scale = min(H, W) / reference``, where the reference is 224 px for ImageNet-C corruptions
(Hendrycks & Dietterich, 2019) and 28 px for MNIST-C corruptions (Mu & Gilmer, 2019). At the
reference size every parameter equals the published table; parameters without a unit of length
(noise levels, contrast factors, JPEG quality, zoom factors, angles) are never scaled.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from robustlab.corruptions.registry import CORRUPTIONS
from robustlab.errors import RobustlabError

SEVERITIES = (1, 2, 3, 4, 5)
IMAGENET_C_SIZE = 224
MNIST_C_SIZE = 28


class Corruption(Protocol):
    def __call__(
        self, x: Tensor, severity: int, generator: torch.Generator | None = None
    ) -> Tensor: ...


@dataclass(frozen=True)
class Context:
    """What an implementation needs besides the image: the RNG and the pixel scale."""

    generator: torch.Generator
    device: torch.device
    scale: float  # min(H, W) / reference size
    reference: int
    severity: int

    def px(self, value: float) -> float:
        """A length given in reference pixels, in pixels of this image."""
        return float(value) * self.scale

    # Random numbers: drawn on the CPU from the generator, then moved (devices agree).
    def rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator).to(self.device)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    def uniform(self, low: float, high: float, *shape: int) -> Tensor:
        return self.rand(*shape).mul_(high - low).add_(low)

    def randint(self, low: int, high: int, *shape: int) -> Tensor:
        return torch.randint(low, high, shape, generator=self.generator).to(self.device)

    def sign(self, *shape: int) -> Tensor:
        return self.randint(0, 2, *shape).float().mul_(2).sub_(1)


def check_severity(severity: Any) -> int:
    """Severity must be an integer in 1..5."""
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise RobustlabError(f"severity must be an integer from 1 to 5, got {severity!r}.")
    return severity


def check_batch(x: Any, name: str) -> Tensor:
    """A float (N, C, H, W) batch, C in {1, 3}, H and W >= 2, values in [0, 1]."""
    if not isinstance(x, Tensor):
        raise RobustlabError(f"corruption '{name}' needs a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise RobustlabError(
            f"corruption '{name}' needs a float tensor in [0, 1], got dtype {x.dtype}."
        )
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[2] < 2 or x.shape[3] < 2:
        raise RobustlabError(
            f"corruption '{name}' needs images of shape (N, C, H, W) with C 1 or 3 and H, W >= 2,"
            f" got {tuple(x.shape)}."
        )
    if x.numel() == 0:
        raise RobustlabError(f"corruption '{name}' got an empty batch.")
    lo, hi = torch.aminmax(x.detach())
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))) or lo < -1e-6 or hi > 1 + 1e-6:
        raise RobustlabError(
            f"corruption '{name}' needs finite inputs in [0, 1], got values in "
            f"[{float(lo):.4g}, {float(hi):.4g}]."
        )
    return x


def check_generator(generator: Any) -> torch.Generator:
    if generator is None:
        return torch.default_generator
    if not isinstance(generator, torch.Generator):
        raise RobustlabError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}."
        )
    if generator.device.type != "cpu":
        raise RobustlabError(
            "generator must be a CPU torch.Generator (random numbers are drawn on the CPU so that"
            f" devices agree), got one on {generator.device}."
        )
    return generator


Impl = Callable[[Tensor, Any, Context], Tensor]


def register(
    name: str, impl: Impl, table: Sequence[Any], *, reference: int, doc: str
) -> Corruption:
    """Register ``impl`` as corruption ``name`` with one parameter row per severity.

    The wrapper owns the shared steps: input and severity checks, the generator default, the
    size scale, float32 compute, clipping to [0, 1] and casting back to the input dtype.
    """
    if len(table) != len(SEVERITIES):
        raise ValueError(f"corruption '{name}' needs {len(SEVERITIES)} parameter rows.")
    rows = tuple(table)

    @functools.wraps(impl)
    def corruption(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
        check_batch(x, name)
        s = check_severity(severity)
        ctx = Context(
            generator=check_generator(generator),
            device=x.device,
            scale=min(x.shape[2], x.shape[3]) / reference,
            reference=reference,
            severity=s,
        )
        out = impl(x.detach().float(), rows[s - 1], ctx)
        return out.clamp_(0.0, 1.0).to(x.dtype)

    corruption.__name__ = name.replace("-", "_")
    corruption.__qualname__ = corruption.__name__
    corruption.__doc__ = doc
    corruption.parameters = rows  # type: ignore[attr-defined]
    corruption.reference_size = reference  # type: ignore[attr-defined]
    CORRUPTIONS.register(name, corruption)
    return corruption
