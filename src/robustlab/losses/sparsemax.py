"""Sparsemax and the sparsemax loss (Martins & Astudillo, ICML 2016).

``sparsemax(z) = argmin_{p in simplex} ||p - z||^2 = max(z - tau(z), 0)``, where, with ``z`` sorted
decreasingly, ``k(z) = max{k : 1 + k z_(k) > sum_{j <= k} z_(j)}`` and ``tau(z) = (sum_{j <= k(z)}
z_(j) - 1) / k(z)`` (Eq. 2-3, Algorithm 1). Unlike softmax it can put exactly zero mass on classes.

The sparsemax loss (Eq. 16) ``L(z, y) = -z_y + 1/2 sum_{j in S(z)} (z_j^2 - tau(z)^2) + 1/2`` over
the support ``S(z)`` is convex, non-negative, Huber-like, and has gradient ``sparsemax(z) - e_y``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlab.losses._common import PerSampleLoss, pick
from robustlab.losses.registry import LOSSES


def _threshold(z: Tensor) -> Tensor:
    """``tau(z)`` of every row of ``z`` (N, K), shape (N, 1)."""
    z_sorted = z.sort(dim=1, descending=True).values
    k = torch.arange(1, z.shape[1] + 1, dtype=z.dtype, device=z.device)
    cumsum = z_sorted.cumsum(1)
    support_size = (1 + k * z_sorted > cumsum).sum(1, keepdim=True)  # the support is a prefix
    return (cumsum.gather(1, support_size - 1) - 1) / support_size.to(z.dtype)


def sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection of ``z`` onto the probability simplex along ``dim``."""
    moved = z.movedim(dim, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    # Exact, as sparsemax(z + c) = sparsemax(z); keeps the cumulative sums small.
    flat = flat - flat.max(1, keepdim=True).values.detach()
    p = (flat - _threshold(flat)).clamp_min(0)
    return p.reshape(moved.shape).movedim(-1, dim)


class Sparsemax(nn.Module):
    """Sparsemax as a layer, a drop-in replacement for ``nn.Softmax(dim)``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, z: Tensor) -> Tensor:
        return sparsemax(z, self.dim)


@LOSSES.register("sparsemax")
class SparsemaxLoss(PerSampleLoss):
    """Sparsemax loss ``-z_y + 1/2 sum_{j in S} (z_j^2 - tau^2) + 1/2`` (Martins & Astudillo 2016,
    Eq. 16)."""

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        # The loss is shift invariant; shifting by the max keeps z_j^2 - tau^2 free of cancellation.
        z = logits - logits.max(1, keepdim=True).values.detach()
        tau = _threshold(z)
        p = (z - tau).clamp_min(0)  # z_j^2 - tau^2 = p_j (z_j + tau) on the support, 0 elsewhere
        return -pick(z, target) + 0.5 * (p * (z + tau)).sum(1) + 0.5
