"""FMN, the fast minimum-norm attack (Pintor, Roli, Brendel & Biggio, NeurIPS 2021, "Fast minimum-norm
adversarial attacks through adaptive norm constraints"), for L0, L1, L2 and Linf.

Normalised gradient ascent on the logit margin ``L = max_{j != y} z_j - z_y`` (targeted:
``z_t - max_{j != t} z_j``), projected onto an Lp ball whose radius ``eps_k`` adapts (Alg. 1):

    adversarial:                eps_k = min(eps_{k-1} (1 - gamma_k), best norm so far)
    not yet, an adversarial     eps_k = eps_{k-1} (1 + gamma_k)
      was found before:
    never adversarial:          eps_k = max(||delta_k|| + |L| / ||grad L||_q, eps_{k-1} (1 + gamma_k))
    L0 (integer radius):        eps_k = min(eps - 1, floor(eps (1 - gamma)), best) / max(eps + 1,
                                        floor(eps (1 + gamma)))

    delta_{k+1} = clip_box( Proj_{||.|| <= eps_k}( delta_k + alpha_k grad L / ||grad L||_2 ) )

(the second term of the max is ours, ``paper_radius=True`` drops it: Alg. 1 uses the linear
estimate of the distance to the boundary alone, but clipping to the [0, 1] box keeps ``||delta||``
below ``eps``, so the estimate can shrink step after step and the attack stall in front of the
boundary; on a locally linear model it also lands exactly on the boundary, where the prediction is a tie), with ``alpha_k`` and
``gamma_k`` cosine-annealed from ``alpha_init`` / ``gamma_init`` to ``alpha_final`` (default
``alpha_init / 100``) / ``gamma_final``; ``eps`` never exceeds the largest norm the box allows. The
smallest adversarial iterate is returned.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustlab.attacks.base import Attack, minimal_norm_score
from robustlab.attacks.geometry import dual_norm, perturbation_norms, project_ball
from robustlab.attacks.objectives import is_adversarial, margin_objective
from robustlab.attacks.params import fixed, flag, integer, nonnegative, optional, param, positive
from robustlab.attacks.registry import ATTACKS


@ATTACKS.register("fmn")
class FMN(Attack):
    """Fast minimum-norm attack with an adaptive Lp bound, L0/L1/L2/Linf (Pintor et al. 2021)."""

    name = "fmn"
    minimal_norm = True
    default_norm = "l2"
    supports_eot = True
    supported_norms = ("linf", "l2", "l1", "l0")

    threat = param(None)
    steps: int = param(100, integer)
    alpha_init: float = param(1.0, positive)
    alpha_final: float | None = param(None, optional(positive))  # None: alpha_init / 100
    gamma_init: float = param(0.05, positive)
    gamma_final: float = param(0.001, nonnegative)
    #: True: Alg. 1's radius before the first adversarial point (the linear estimate alone)
    paper_radius: bool = param(False, flag)
    loss = fixed("ce")
    restarts = fixed(1)

    def _check_params(self) -> None:
        if self.alpha_final is None:
            self.alpha_final = self.alpha_init / 100

    def perturb(self, model, x, y, target, generator):
        n = x.shape[0]
        delta = torch.zeros_like(x)
        largest = perturbation_norms(torch.maximum(x, 1 - x), self.norm)
        eps = torch.full((n,), 1.0 if self.norm == "l0" else math.inf, device=x.device)
        eps = eps.to(x.dtype)
        best = x.clone()
        best_score = torch.full((n,), -math.inf, device=x.device, dtype=x.dtype)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for k in range(self.steps):
            cosine = (1 + math.cos(math.pi * k / self.steps)) / 2
            alpha = self.alpha_final + (self.alpha_init - self.alpha_final) * cosine
            gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cosine

            logits, loss, grad = self.loss_gradient(model, x + delta, y, target, margin_objective)
            with torch.no_grad():
                norms = perturbation_norms(delta, self.norm)
                adv = is_adversarial(logits, y, target)
                score = minimal_norm_score(norms, adv)
                better = score > best_score
                best[better] = (x + delta)[better]
                best_score = torch.maximum(best_score, score)
                found |= adv
                eps = self._update_eps(eps, adv, found, -best_score, norms, loss, grad, gamma)
                eps = torch.minimum(eps, largest)
                g2 = perturbation_norms(grad, "l2").clamp_min(1e-12)
                step = grad / g2.reshape(-1, *([1] * (x.dim() - 1)))
                delta = project_ball(delta + alpha * step, self.norm, eps)
                delta = (x + delta).clamp(0.0, 1.0) - x
        return best

    def _update_eps(
        self,
        eps: Tensor,
        adv: Tensor,
        found: Tensor,
        best_norm: Tensor,
        norms: Tensor,
        loss: Tensor,
        grad: Tensor,
        gamma: float,
    ) -> Tensor:
        """The adaptive radius of Alg. 1 (see the module docstring)."""
        if self.norm == "l0":
            shrink = torch.minimum(torch.minimum(eps - 1, (eps * (1 - gamma)).floor()), best_norm)
            grow = torch.maximum(eps + 1, (eps * (1 + gamma)).floor())
            return torch.where(adv, shrink, grow).clamp_min(0)
        linear = norms + loss.abs() / dual_norm(grad, self.norm).clamp_min(1e-12)
        grow = eps * (1 + gamma)
        keep_growing = torch.isfinite(eps) & (not self.paper_radius)
        not_found = torch.where(keep_growing, torch.maximum(linear, grow), linear)
        shrink = torch.minimum(eps * (1 - gamma), best_norm)
        return torch.where(adv, shrink, torch.where(found, grow, not_found))
