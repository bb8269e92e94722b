"""Label-distributionally robust losses LDR-KL and ALDR-KL (Zhu, Ying & Yang, ICML 2023).

The LDR-KL loss is the worst case, over label distributions ``p`` regularized towards uniform by
a KL penalty, of the margin-augmented score differences:

    LDR-KL_lam(s, y) = max_{p in simplex} sum_k p_k (c 1[k != y] + s_k - s_y) - lam KL(p, 1/K)
                     = lam log( (1/K) sum_k exp((c 1[k != y] + s_k - s_y) / lam) ).

lam -> 0 gives the Crammer-Singer multi-class hinge loss, and with c = 0 it is a temperature-scaled
CE shifted by ``lam log K``. ALDR-KL lets the adversary also pick a per-instance ``lam`` near
``lam0`` at a quadratic price:

    ALDR-KL(s, y) = max_{lam} LDR-KL_lam(s, y) - alpha log K / (2 lam0) (lam - lam0)^2,

whose stationary points satisfy ``lam = lam0 (1 - KL(p*_lam, 1/K) / (alpha log K))`` with
``p*_lam = softmax(d / lam)`` (the update of the authors' implementation). The right-hand side
grows with ``lam``, so fixed-point steps from ``lam0`` decrease monotonically to the maximiser
nearest ``lam0``; they run without gradient, and by the envelope theorem the gradient at that
fixed ``lam`` is the gradient of the loss. Confident predictions (peaked ``p*``) get a smaller
``lam``, uncertain ones stay near ``lam0``.

As in the authors' implementation the scores are the logits rescaled to unit mean absolute value,
``s = z / mean_k |z_k|`` (``normalize=True``), which bounds them as the paper's robustness result
needs; ``normalize=False`` uses the logits as they are.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustlab.errors import RobustlabError
from robustlab.losses._common import PerSampleLoss, one_hot, pick
from robustlab.losses.registry import LOSSES
from robustlab.validation import check_int, check_positive

# Guards the rescaling of an all-zero logit vector.
NORM_FLOOR = 1e-12


def margin_differences(logits: Tensor, target: Tensor, margin: float, normalize: bool) -> Tensor:
    """``d_k = c 1[k != y] + s_k - s_y`` of the (optionally rescaled) scores ``s``."""
    s = logits
    if normalize:
        s = s / s.abs().mean(1, keepdim=True).clamp_min(NORM_FLOOR)
    not_y = 1 - one_hot(target, logits.shape[1], s)
    return margin * not_y + s - pick(s, target)[:, None]


def ldr_kl(d: Tensor, lam: float | Tensor) -> Tensor:
    """``lam log mean_k exp(d_k / lam)`` per row; ``lam`` is a number or one value per row."""
    lam = torch.as_tensor(lam, dtype=d.dtype, device=d.device).reshape(-1)
    return lam * (torch.logsumexp(d / lam[:, None], 1) - math.log(d.shape[1]))


class _LDRBase(PerSampleLoss):
    def __init__(self, lam: float, margin: float, normalize: bool, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.lam = check_positive(lam, "lam")
        self.margin = check_positive(margin, "margin", allow_zero=True)
        self.normalize = bool(normalize)


@LOSSES.register("ldr-kl")
class LDRKL(_LDRBase):
    """LDR-KL ``lam log mean_k exp((c * (k != y) + s_k - s_y) / lam)`` (Zhu et al. 2023, Eq. 4)."""

    def __init__(
        self, lam: float = 1.0, margin: float = 1.0, normalize: bool = True, reduction: str = "mean"
    ) -> None:
        super().__init__(lam, margin, normalize, reduction)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return ldr_kl(margin_differences(logits, target, self.margin, self.normalize), self.lam)


@LOSSES.register("aldr-kl")
class ALDRKL(_LDRBase):
    """ALDR-KL: LDR-KL with a per-instance ``lam`` chosen adversarially near ``lam0`` (Zhu et al.
    2023, Sec. 6); ``alpha > 1`` prices the deviation (larger: closer to LDR-KL with ``lam0``)."""

    def __init__(
        self,
        lam: float = 1.0,
        alpha: float = 2.0,
        margin: float = 1.0,
        normalize: bool = True,
        iterations: int = 10,
        reduction: str = "mean",
    ) -> None:
        super().__init__(lam, margin, normalize, reduction)
        self.alpha = check_positive(alpha, "alpha")
        if self.alpha <= 1:
            raise RobustlabError(
                f"alpha must be > 1 for ALDR-KL (it keeps lam > 0), got {alpha!r}."
            )
        self.iterations = check_int(iterations, "iterations")

    def instance_lambdas(self, d: Tensor) -> Tensor:
        """The per-row ``lam`` of the fixed point ``lam = lam0 (1 - KL(softmax(d/lam)) / (alpha
        log K))``, reached from ``lam0`` by ``iterations`` monotone steps."""
        log_k = math.log(d.shape[1])
        d = d.detach()
        lam = torch.full(d.shape[:1], self.lam, dtype=d.dtype, device=d.device)
        for _ in range(self.iterations):
            log_p = torch.log_softmax(d / lam[:, None], 1)
            kl = (log_p.exp() * (log_p + log_k)).sum(1).clamp(0.0, log_k)
            lam = self.lam * (1 - kl / (self.alpha * log_k))
        return lam

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        d = margin_differences(logits, target, self.margin, self.normalize)
        lam = self.instance_lambdas(d)
        price = self.alpha * math.log(d.shape[1]) / (2 * self.lam) * (lam - self.lam) ** 2
        return ldr_kl(d, lam) - price
