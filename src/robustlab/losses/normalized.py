"""Normalized losses and the Active-Passive Loss (APL) of Ma et al. 2020.

Normalizing a loss by its sum over all labels, ``L_norm(z, y) = L(z, y) / sum_k L(z, k)``
(Eq. 3), makes it robust to symmetric noise (Theorem 1) but prone to underfitting; APL
``alpha * Active + beta * Passive`` (Eq. 9) pairs a normalized active loss (NCE, NFL, NGCE: they
only push up ``p_y``) with a passive one (RCE, MAE: they also push down ``p_{k != y}``).
Hyper-parameters of the paper's MNIST setting: alpha=1, beta=10 (reference configs).
"""

from __future__ import annotations

import inspect
from abc import abstractmethod

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
from robustlab.losses.robust import MAE, RCE
from robustlab.validation import check_positive


class NormalizedLoss(PerSampleLoss):
    """A loss normalized over the labels, ``L_norm(z, y) = L(z, y) / sum_k L(z, k)`` (Ma et al.
    2020, Eq. 3); subclasses give ``L(z, k)`` for every label (:meth:`per_label`)."""

    @abstractmethod
    def per_label(self, logits: Tensor) -> Tensor:
        """``L(z, k)`` for every sample and label, shape (N, K)."""

    def normalizer(self, losses: Tensor) -> Tensor | int:
        """``sum_k L(z, k)`` of Eq. 3."""
        return losses.sum(1)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        losses = self.per_label(logits)
        return pick(losses, target) / self.normalizer(losses)


@LOSSES.register("nce")
class NCE(NormalizedLoss):
    """Normalized cross-entropy ``NCE = log p_y / sum_k log p_k`` (Ma et al. 2020, Eq. 4).

    Each term ``log p_k`` is <= 0, so NCE lies in [0, 1], and it is 0 exactly when ``p_y = 1``.
    """

    def per_label(self, logits: Tensor) -> Tensor:
        return -F.log_softmax(logits, 1)


@LOSSES.register("nfl")
class NFL(NormalizedLoss):
    """Normalized focal loss ``NFL = FL_y / sum_k FL_k`` with ``FL_k = -(1 - p_k)^gamma log p_k``
    (Ma et al. 2020, Eq. 5). Gradients flow through numerator and normalizer alike."""

    def __init__(self, gamma: float = 0.5, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)

    def per_label(self, logits: Tensor) -> Tensor:
        return focal_term(F.log_softmax(logits, 1), self.gamma)


@LOSSES.register("ngce")
class NGCE(NormalizedLoss):
    """Normalized GCE ``NGCE = (1 - p_y^q) / (K - sum_k p_k^q)`` (Ma et al. 2020, Eq. 6)."""

    def __init__(self, q: float = 0.7, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.q = check_unit_interval(q, "q")
        if self.q == 0:
            raise RobustlabError("q must be in (0, 1] for NGCE, got 0.")

    def per_label(self, logits: Tensor) -> Tensor:
        return -torch.expm1(self.q * F.log_softmax(logits, 1))  # q * GCE of every label


@LOSSES.register("nmae")
class NMAE(NormalizedLoss):
    """Normalized MAE ``NMAE = (1 - p_y) / sum_k (1 - p_k) = (1 - p_y) / (K - 1)``."""

    def per_label(self, logits: Tensor) -> Tensor:
        return one_minus_exp(F.log_softmax(logits, 1))  # MAE of every label

    def normalizer(self, losses: Tensor) -> int:
        """``sum_k (1 - p_k) = K - 1``, in closed form."""
        return losses.shape[1] - 1


class ActivePassiveLoss(PerSampleLoss):
    """``alpha * Active + beta * Passive`` (Ma et al. 2020, Eq. 9); subclasses name the pair.

    Extra keyword arguments go to the active loss (``gamma`` for NFL, ``q`` for NGCE).
    """

    active_loss: type[PerSampleLoss]
    passive_loss: type[PerSampleLoss]

    def __init__(
        self, alpha: float = 1.0, beta: float = 1.0, reduction: str = "mean", **active_kwargs
    ) -> None:
        super().__init__(reduction)
        self.alpha = check_positive(alpha, "alpha", allow_zero=True)
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.active = self.active_loss(reduction="none", **active_kwargs)
        self.passive = self.passive_loss(reduction="none")

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        active = self.active.per_sample(logits, target)
        return self.alpha * active + self.beta * self.passive.per_sample(logits, target)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, reduction={self.reduction!r}"


def active_passive(active: type[PerSampleLoss], passive: type[PerSampleLoss]) -> type:
    """The APL class ``alpha active + beta passive`` (e.g. ``NCEandRCE``), registered as
    ``"nce+rce"``; the active loss's own arguments (``gamma``, ``q``) go to it."""
    a, p = active.__name__, passive.__name__
    own = [n for n in inspect.signature(active).parameters if n != "reduction"]
    note = "".join(f"; ``{n}`` goes to {a}" for n in own)
    cls = type(
        f"{a}and{p}",
        (ActivePassiveLoss,),
        {
            "__doc__": f"APL ``alpha {a} + beta {p}`` (Ma et al. 2020){note}.",
            "__module__": __name__,
            "active_loss": active,
            "passive_loss": passive,
        },
    )
    return LOSSES.register(f"{a.lower()}+{p.lower()}", cls)


NCEandRCE = active_passive(NCE, RCE)
NCEandMAE = active_passive(NCE, MAE)
NFLandRCE = active_passive(NFL, RCE)
NFLandMAE = active_passive(NFL, MAE)
NGCEandRCE = active_passive(NGCE, RCE)
NGCEandMAE = active_passive(NGCE, MAE)
