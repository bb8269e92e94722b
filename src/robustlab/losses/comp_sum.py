"""The comp-sum loss family of Mao, Mohri & Zhong (ICML 2023), one parameter tau >= 0.

``L_tau(z, y) = Phi_tau(u)`` with ``u = sum_{k != y} exp(z_k - z_y)`` and

    Phi_tau(u) = log(1 + u)                               (tau = 1)
    Phi_tau(u) = ((1 + u)^(1 - tau) - 1) / (1 - tau)      (tau != 1).

Since ``1 + u = 1 / p_y`` this is ``(p_y^(tau - 1) - 1) / (1 - tau)``: tau = 0 is the
sum-exponential loss ``u``, tau = 1 the logistic loss (CE), 1 < tau < 2 GCE with
``q = tau - 1``, tau = 2 the MAE ``1 - p_y``. For tau < 1 the loss grows exponentially in the
margin, and overflows to inf in float32 for margins beyond about ``88 / (1 - tau)``, as the
function itself does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.losses._common import PerSampleLoss, pick
from robustlab.losses.registry import LOSSES
from robustlab.validation import check_positive


@LOSSES.register("comp-sum")
class CompSum(PerSampleLoss):
    """Comp-sum loss ``Phi_tau(sum_{k != y} exp(z_k - z_y))`` (Mao et al. 2023, Eq. 3)."""

    def __init__(self, tau: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.tau = check_positive(tau, "tau", allow_zero=True)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        log_py = pick(F.log_softmax(logits, 1), target)
        if self.tau == 1.0:
            return -log_py
        return torch.expm1((self.tau - 1.0) * log_py) / (1.0 - self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}"
