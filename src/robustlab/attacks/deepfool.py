"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016, "DeepFool: a simple and accurate method to
fool deep neural networks"), L2 and Linf.

At each step the classifier is linearised at the current point and the point moves onto the closest
linearised boundary among the ``candidates`` classes with the highest clean logits (Alg. 2, Eq. 8-9):

    l = argmin_{k != y} |f_k| / ||w_k||_q,     r_i = |f_l| / ||w_l||_2^2 w_l  (L2),
                                               r_i = |f_l| / ||w_l||_1 sign(w_l)  (Linf),

with ``f_k = z_k - z_y`` and ``w_k = grad f_k``. The steps accumulate into ``r`` and the candidate
is ``x + (1 + overshoot) r`` (clipped to [0, 1]) until the label changes. The robustness metric of
the paper is ``rho_adv = mean ||r|| / ||x||`` (Eq. 15), :func:`rho_adv`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustlab.attacks.base import Attack, AttackResult, top_k_targets
from robustlab.attacks.geometry import perturbation_norms, project_hyperplane
from robustlab.attacks.linearize import class_gradients, closest_boundary
from robustlab.attacks.objectives import is_adversarial
from robustlab.attacks.params import fixed, integer, nonnegative, param
from robustlab.attacks.registry import ATTACKS
from robustlab.validation import check_int

_SLACK = 1e-4


def rho_adv(result: AttackResult, x: Tensor, norm: str = "l2") -> float:
    """``rho_adv = mean ||r|| / ||x||`` over the clean-correct points the attack broke (Eq. 15)."""
    mask = result.success & result.clean_correct
    if not mask.any():
        return float("nan")
    ratio = result.norms[mask] / perturbation_norms(x[mask], norm).clamp_min(1e-12)
    return float(ratio.mean())


def _at_least_two(value: int, name: str) -> int:
    return check_int(value, name, minimum=2)


@ATTACKS.register("deepfool")
class DeepFool(Attack):
    """DeepFool: minimal L2/Linf perturbation by iterative linearisation (Moosavi-Dezfooli 2016)."""

    name = "deepfool"
    minimal_norm = True
    default_norm = "l2"
    supported_norms = ("l2", "linf")

    threat = param(None)
    steps: int = param(50, integer)
    overshoot: float = param(0.02, nonnegative)
    candidates: int = param(10, _at_least_two)
    loss = fixed("ce")
    targeted = fixed(False)
    restarts = fixed(1)

    def run(self, model, x, y, target=None) -> AttackResult:
        result = super().run(model, x, y, target)
        result.extras["rho_adv"] = rho_adv(result, x, self.norm)
        return result

    def perturb(self, model, x, y, target, generator):
        def forward(z: Tensor) -> Tensor:
            return self._forward(model, z)

        classes = top_k_targets(self._predict(model, x), y, self.candidates - 1)
        r_total = torch.zeros_like(x)
        x_adv = x.clone()
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.steps):
            f, w, logits = class_gradients(forward, x_adv[active], y[active], classes[active])
            keep = ~is_adversarial(logits, y[active])
            active, f, w = active[keep], f[keep], w[keep]
            if active.numel() == 0:
                break
            f_l, w_l = closest_boundary(f, w, self.norm)
            # |f| + 1e-4 as in the authors' code: each step ends strictly past the linear boundary
            r_total[active] += project_hyperplane(w_l, -f_l + _SLACK, self.norm)
            x_adv[active] = (x[active] + (1 + self.overshoot) * r_total[active]).clamp(0.0, 1.0)
        return x_adv
