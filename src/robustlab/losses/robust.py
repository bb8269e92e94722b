"""Noise-robust losses: MAE, GCE, RCE, SCE and bootstrapping.

MAE and RCE are "symmetric" (``sum_k L(z, k)`` is constant), which makes them tolerant to
symmetric label noise (Ghosh et al. 2017); GCE interpolates between CE and MAE; SCE adds RCE to
CE; bootstrapping mixes the label with the model's own prediction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.errors import RobustlabError
from robustlab.losses._common import (
    PerSampleLoss,
    check_unit_interval,
    one_hot,
    one_minus_exp,
    pick,
)
from robustlab.losses.registry import LOSSES
from robustlab.validation import check_positive

BOOTSTRAP_MODES = ("soft", "hard")


@LOSSES.register("mae")
class MAE(PerSampleLoss):
    """Mean absolute error ``MAE = 1 - p_y`` (Ghosh et al. 2017), bounded and symmetric.

    This is half the L1 distance ``sum_k |p_k - e_y,k| = 2 (1 - p_y)`` of the paper; the scale
    is the one of the APL reference implementation (Ma et al. 2020), so its alpha/beta carry over.
    """

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return one_minus_exp(pick(F.log_softmax(logits, 1), target))


@LOSSES.register("gce")
class GCE(PerSampleLoss):
    """Generalized cross-entropy ``L_q = (1 - p_y^q) / q`` (Zhang & Sabuncu 2018, Eq. 6).

    ``q -> 0`` gives CE and ``q = 1`` gives MAE; the paper uses q = 0.7.
    """

    def __init__(self, q: float = 0.7, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.q = check_unit_interval(q, "q")
        if self.q == 0:
            raise RobustlabError("q must be in (0, 1] for GCE (q -> 0 is CE: use 'ce'), got 0.")

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        log_py = pick(F.log_softmax(logits, 1), target)
        return -torch.expm1(self.q * log_py) / self.q


@LOSSES.register("rce")
class RCE(PerSampleLoss):
    """Reverse cross-entropy ``RCE = -sum_k p_k log q_k`` with the label ``q = e_y`` clipped to
    ``[clip, 1]`` (Wang et al. 2019, Eq. 5): in closed form ``RCE = -log(clip) (1 - p_y)``."""

    def __init__(self, clip: float = 1e-4, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.clip = check_unit_interval(clip, "clip", closed=False)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return -math.log(self.clip) * one_minus_exp(pick(F.log_softmax(logits, 1), target))


@LOSSES.register("sce")
class SCE(PerSampleLoss):
    """Symmetric cross-entropy ``SCE = alpha CE + beta RCE`` (Wang et al. 2019, Eq. 6).

    Defaults are the paper's CIFAR-10 setting; its MNIST setting is alpha=0.01, beta=1.
    """

    def __init__(
        self, alpha: float = 0.1, beta: float = 1.0, clip: float = 1e-4, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self.alpha = check_positive(alpha, "alpha", allow_zero=True)
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.rce = RCE(clip, reduction="none")

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, target, reduction="none")
        return self.alpha * ce + self.beta * self.rce.per_sample(logits, target)


def bootstrap_loss(
    logits: Tensor, target: Tensor, beta: float | Tensor, mode: str, detach: bool
) -> Tensor:
    """Per-sample bootstrapping loss ``-sum_k [beta e_y + (1 - beta) t]_k log p_k``.

    ``t`` is the prediction ``p`` (``mode="soft"``) or its one-hot argmax (``"hard"``) (Reed et
    al. 2015, Eqs. 5-6); ``beta`` is a number or one weight per sample (the dynamic version of
    Arazo et al. 2019, Eq. 9, uses ``beta = 1 - w`` with ``w`` the posterior of being noisy).
    ``detach`` stops the gradient through ``t``; with ``mode="soft"`` and ``detach=False`` the loss
    is CE plus an entropy penalty, as in Reed et al.
    """
    if mode not in BOOTSTRAP_MODES:
        raise RobustlabError(
            f"Unknown bootstrapping mode {mode!r}; valid modes: {', '.join(BOOTSTRAP_MODES)}."
        )
    log_p = F.log_softmax(logits, 1)
    if mode == "soft":
        t = log_p.exp()
        t = t.detach() if detach else t
    else:
        t = one_hot(log_p.argmax(1), logits.shape[1], log_p)
    beta = torch.as_tensor(beta, dtype=log_p.dtype, device=log_p.device).reshape(-1, 1)
    mixed = beta * one_hot(target, logits.shape[1], log_p) + (1 - beta) * t
    return -(mixed * log_p).sum(1)


class _Bootstrapping(PerSampleLoss):
    mode: str  # "soft" or "hard", set by the subclass

    def __init__(self, beta: float, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.beta = check_unit_interval(beta, "beta")

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return bootstrap_loss(logits, target, self.beta, self.mode, detach=False)


@LOSSES.register("soft-bootstrap")
class SoftBootstrapping(_Bootstrapping):
    """Soft bootstrapping: CE against ``beta e_y + (1 - beta) p`` (Reed et al. 2015).

    ``L = -sum_k (beta e_y + (1 - beta) p)_k log p_k``, with gradient through ``p``.
    """

    mode = "soft"

    def __init__(self, beta: float = 0.95, reduction: str = "mean") -> None:
        super().__init__(beta, reduction)


@LOSSES.register("hard-bootstrap")
class HardBootstrapping(_Bootstrapping):
    """Hard bootstrapping: CE against ``beta e_y + (1 - beta) onehot(argmax p)`` (Reed et al.
    2015)."""

    mode = "hard"

    def __init__(self, beta: float = 0.8, reduction: str = "mean") -> None:
        super().__init__(beta, reduction)
