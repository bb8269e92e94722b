"""Standard classification losses: cross-entropy and its reweighted or smoothed variants.

Notation used by every loss in :mod:`robustlab.losses`: logits ``z`` (N, K), probabilities
``p = softmax(z)``, the (possibly noisy) label ``y`` and its one-hot vector ``e_y``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.errors import RobustlabError
from robustlab.losses._common import (
    PerSampleLoss,
    check_unit_interval,
    focal_term,
    one_minus_exp,
    pick,
)
from robustlab.losses.registry import LOSSES
from robustlab.validation import check_positive


@LOSSES.register("ce")
class CrossEntropy(PerSampleLoss):
    """Cross-entropy ``CE = -log p_y``."""

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, reduction="none")


@LOSSES.register("focal")
class FocalLoss(PerSampleLoss):
    """Focal loss ``FL = -(1 - p_y)^gamma log p_y`` (Lin et al. 2017, Eq. 5); gamma=0 is CE."""

    def __init__(self, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return focal_term(pick(F.log_softmax(logits, 1), target), self.gamma)


@LOSSES.register("label-smoothing")
class LabelSmoothingCE(PerSampleLoss):
    """Label smoothing (Szegedy et al. 2016): CE against ``(1 - eps) e_y + eps / K``.

    ``L = (1 - eps) CE + eps * mean_k(-log p_k)``.
    """

    def __init__(self, smoothing: float = 0.1, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.smoothing = check_unit_interval(smoothing, "smoothing")

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, reduction="none", label_smoothing=self.smoothing)


@LOSSES.register("poly")
class PolyLoss(PerSampleLoss):
    """PolyLoss (Leng et al. 2022): ``L = CE + sum_{j=1}^{N} eps_j (1 - p_y)^j``.

    A float ``epsilon`` is Poly-1 (Eq. 3, ``CE + eps (1 - p_y)``); a sequence gives Poly-N with
    one coefficient per power. Since ``CE = sum_j (1 - p_y)^j / j``, ``eps_j = -1/j`` removes the
    leading terms of that expansion, and ``eps = 0`` is CE.
    """

    def __init__(self, epsilon: float | Sequence[float] = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        coeffs = [epsilon] if isinstance(epsilon, (int, float)) else list(epsilon)
        if not coeffs or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and abs(c) < float("inf")
            for c in coeffs
        ):
            raise RobustlabError(
                f"epsilon must be a finite number (Poly-1) or a non-empty sequence of finite "
                f"numbers (Poly-N), got {epsilon!r}."
            )
        self.epsilon = [float(c) for c in coeffs]

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        log_py = pick(F.log_softmax(logits, 1), target)
        q = one_minus_exp(log_py)
        powers = torch.stack([q**j for j in range(1, len(self.epsilon) + 1)], dim=1)
        eps = torch.tensor(self.epsilon, dtype=q.dtype, device=q.device)
        return -log_py + powers @ eps

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, reduction={self.reduction!r}"
