"""The Carlini & Wagner L2 attack (Carlini & Wagner, IEEE S&P 2017, "Towards evaluating the robustness
of neural networks"), untargeted and targeted.

The box constraint is removed by the change of variables ``x' = (tanh(w) + 1) / 2`` and Adam
minimises, per sample (Sec. V-A, Eq. for the L2 attack)

    ||x' - x||_2^2 + c * max( Z_y - max_{j != y} Z_j, -kappa )     (untargeted)
    ||x' - x||_2^2 + c * max( max_{j != t} Z_j - Z_t, -kappa )     (targeted)

with a binary search over the constant ``c`` per sample: after each inner optimisation ``c`` halves
towards the largest value that failed when the point was broken, and is multiplied by 10 while no
adversarial example has been found. The result is the smallest adversarial example seen over all
searches.
"""

from __future__ import annotations

import math

import torch

from robustlab.attacks.base import Attack, minimal_norm_score
from robustlab.attacks.objectives import is_adversarial, margin_objective
from robustlab.attacks.params import fixed, flag, integer, nonnegative, param, positive
from robustlab.attacks.registry import ATTACKS

_TANH_SHRINK = 1 - 1e-6  # keeps atanh finite at pixels exactly 0 or 1


@ATTACKS.register("cw")
class CarliniWagnerL2(Attack):
    """C&W L2: tanh-space Adam on ||delta||^2 + c * margin loss, binary search over c (2017)."""

    name = "cw"
    minimal_norm = True
    default_norm = "l2"
    supported_norms = ("l2",)

    threat = param(None)
    steps: int = param(1000, integer)
    binary_search_steps: int = param(9, integer)
    lr: float = param(0.01, positive)
    initial_const: float = param(1e-3, positive)
    confidence: float = param(0.0, nonnegative)
    abort_early: bool = param(True, flag)
    loss = fixed("ce")
    restarts = fixed(1)

    def perturb(self, model, x, y, target, generator):
        n = x.shape[0]
        w_start = torch.atanh((2 * x - 1) * _TANH_SHRINK)
        const = torch.full((n,), self.initial_const, device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        best = x.clone()
        best_score = torch.full_like(const, -math.inf)
        check_every = max(1, math.ceil(self.steps / 10))
        for _ in range(self.binary_search_steps):
            w = w_start.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=self.lr)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            previous = math.inf
            for step in range(self.steps):
                x_adv = (torch.tanh(w) + 1) / 2
                logits = self._forward(model, x_adv)
                objective = margin_objective(logits, y, target)
                dist2 = (x_adv - x).flatten(1).pow(2).sum(1)
                loss = dist2 + const * (-objective).clamp_min(-self.confidence)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                with torch.no_grad():
                    adv = is_adversarial(logits, y, target) & (objective >= self.confidence)
                    score = minimal_norm_score(dist2.sqrt(), adv)
                    better = score > best_score
                    best[better] = x_adv[better].detach()
                    best_score = torch.maximum(best_score, score)
                    found |= adv
                optimizer.step()
                if self.abort_early and (step + 1) % check_every == 0:
                    total = float(loss.detach().sum())
                    if total > previous * 0.9999:
                        break
                    previous = total
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
        return best
