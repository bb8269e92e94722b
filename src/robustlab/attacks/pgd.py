"""Projected gradient descent (Madry et al., ICLR 2018, "Towards deep learning models resistant to
adversarial attacks") and FGSM (Goodfellow et al., ICLR 2015) as its one-step case.

Each step moves along the steepest-ascent direction of the objective for the threat's norm and
projects back onto the ball intersected with the [0, 1] box:

    x_{t+1} = Proj_{B_p(x, eps) ∩ [0,1]^d}( x_t + alpha * s_p(grad_x L(x_t)) )

with ``s_inf = sign(g)``, ``s_2 = g / ||g||_2`` and the sparse L1 direction of SLIDE (Tramer &
Boneh 2019). Points that become adversarial stop early (their gradient is no longer computed), so
a batch gets cheaper as the attack succeeds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.attacks.objectives import is_adversarial
from robustlab.attacks.params import fixed, flag, integer, optional, param, positive, real
from robustlab.attacks.registry import ATTACKS


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected gradient descent with random start, restarts and per-sample early stopping."""

    name = "pgd"
    supports_eot = True

    threat = param("linf:0.3")
    steps: int = param(40, integer)
    step_size: float | None = param(None, optional(positive))
    random_start: bool = param(True, flag)
    early_stop: bool = param(True, flag)
    l1_sparsity: float = param(0.95, real)

    def _check_params(self) -> None:
        if self.step_size is None:
            self.step_size = self._default_step_size()

    def _default_step_size(self) -> float:
        """Madry et al.'s rule of thumb: 2.5 * eps / steps lets a step sequence cross the ball."""
        return 2.5 * self.threat.eps / self.steps

    def gradient_step(
        self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One ascent step from ``x_adv``: returns (next point, logits at x_adv, objective)."""
        logits, objective, grad = self.loss_gradient(model, x_adv, y, target)
        direction = self.threat.steepest_direction(grad, x_adv, self.l1_sparsity)
        x_next = self.threat.project(x_adv + self.step_size * direction, x)
        return x_next, logits, objective

    def perturb(self, model, x, y, target, generator):
        x_adv = self.threat.random_init(x, generator) if self.random_start else x.clone()
        if self.threat.eps == 0:
            return x_adv
        active: Tensor | None = None  # indices still attacked; None means all (no gather needed)
        for _ in range(self.steps):
            if active is None:
                x_next, logits, _ = self.gradient_step(model, x, x_adv, y, target)
                if not self.early_stop:
                    x_adv = x_next
                    continue
                broken = is_adversarial(logits, y, target)
                x_adv = torch.where(broken.view(-1, *[1] * (x.dim() - 1)), x_adv, x_next)
                if broken.any():
                    active = (~broken).nonzero().squeeze(1)
            else:
                t = target[active] if target is not None else None
                x_next, logits, _ = self.gradient_step(
                    model, x[active], x_adv[active], y[active], t
                )
                broken = is_adversarial(logits, y[active], t)
                keep = ~broken
                x_adv[active[keep]] = x_next[keep]
                active = active[keep]
            if active is not None and active.numel() == 0:
                break
        return x_adv


@ATTACKS.register("fgsm")
class FGSM(PGD):
    """Fast gradient sign method: one step of size eps (Goodfellow et al. 2015); with
    ``random_start=True`` and ``step_size=1.25*eps`` it is FGSM-RS (Wong et al. 2020)."""

    name = "fgsm"

    steps = fixed(1)
    random_start: bool = param(False)
    early_stop = fixed(False)
    l1_sparsity = fixed(0.95)
    restarts = fixed(1)

    def _default_step_size(self) -> float:
        return max(self.threat.eps, 1e-12)
