"""FAB, the fast adaptive boundary attack (Croce & Hein, ICML 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), untargeted, targeted and FAB-T, for Linf/L2/L1.

Each iteration linearises the classifier at the current iterate ``x_k`` and picks the closest
linearised boundary ``pi_s`` (Eq. 4-5; the target's boundary when targeted). It projects both
``x_k`` and the original point ``x`` onto ``pi_s`` inside the [0, 1] box (``delta_k``,
``delta_0``) and moves to the biased convex combination (Eq. 7)

    x_{k+1} = clip( (1 - a)(x_k + eta delta_k) + a (x + eta delta_0) ),
    a = min( ||delta_k|| / (||delta_k|| + ||delta_0||), alpha_max ),

with the extrapolation ``eta = 1.05``. When ``x_{k+1}`` is adversarial it is recorded if its norm is
the smallest so far, and the iterate steps back towards ``x``: ``x + beta (x_{k+1} - x)``,
``beta = 0.9`` (Sec. 3.3). Restarts after the first start from a random point at half the
linearised distance (or eps) around ``x``.

FAB-T (registered ``"fab-t"``, the variant AutoAttack uses) runs targeted FAB towards each of the
``n_target_classes`` classes with the highest clean logits and keeps the smallest misclassifying
perturbation: its interface is untargeted (success = misclassified).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack, minimal_norm_score, top_k_targets
from robustlab.attacks.best import BestPoints
from robustlab.attacks.geometry import perturbation_norms, project_hyperplane
from robustlab.attacks.linearize import class_gradients, closest_boundary
from robustlab.attacks.objectives import is_adversarial
from robustlab.attacks.params import fixed, integer, nonnegative, param, positive
from robustlab.attacks.registry import ATTACKS


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


@ATTACKS.register("fab")
class FAB(Attack):
    """Fast adaptive boundary attack: minimal Linf/L2/L1 adversarial examples (Croce & Hein 2020)."""

    name = "fab"
    minimal_norm = True
    default_norm = "linf"

    threat = param(None)
    steps: int = param(100, integer)
    eta: float = param(1.05, positive)
    beta: float = param(0.9, positive)
    alpha_max: float = param(0.1, nonnegative)
    loss = fixed("ce")

    def perturb(self, model, x, y, target, generator):
        return self.descend(model, x, y, target, target, generator)[0]

    def descend(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        plane: Tensor | None,
        goal: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """One FAB run. ``plane``: the class whose boundary with ``y`` is followed (None: the
        closest of all); ``goal``: the class to reach (None: any misclassification).
        Returns the best point per sample and its :func:`minimal_norm_score`."""

        def forward(z: Tensor) -> Tensor:
            return self._forward(model, z)

        if plane is not None:
            classes = plane[:, None]
        else:  # every other class: the closest boundary is picked at each step
            logits = self._predict(model, x)
            classes = top_k_targets(logits, y, logits.shape[1] - 1)
        best = x.clone()
        best_score = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        x_k = x.clone()
        if getattr(self, "_restart", 0) > 0:
            x_k = self._random_start(forward, x, y, classes, generator)
        for _ in range(self.steps):
            f, w, _ = class_gradients(forward, x_k, y, classes)
            f_s, w_s = closest_boundary(f, w, self.norm)
            # hyperplane f_s + <w_s, z - x_k> = 0, reached from x_k and from the original x
            delta_k = project_hyperplane(w_s, -f_s, self.norm, point=x_k)
            c_0 = -f_s - (w_s * (x - x_k)).flatten(1).sum(1)
            delta_0 = project_hyperplane(w_s, c_0, self.norm, point=x)
            n_k = perturbation_norms(delta_k, self.norm)
            n_0 = perturbation_norms(delta_0, self.norm)
            alpha = _bcast((n_k / (n_k + n_0).clamp_min(1e-12)).clamp(0, self.alpha_max), x)
            x_k = (
                (1 - alpha) * (x_k + self.eta * delta_k) + alpha * (x + self.eta * delta_0)
            ).clamp_(0.0, 1.0)
            adv = is_adversarial(self._predict(model, x_k), y, goal)
            step = x_k - x
            score = minimal_norm_score(perturbation_norms(step, self.norm), adv)
            better = score > best_score
            best[better] = x_k[better]
            best_score = torch.maximum(best_score, score)
            x_k = torch.where(_bcast(adv, x), x + self.beta * step, x_k)
        return best, best_score

    def _random_start(
        self,
        forward,
        x: Tensor,
        y: Tensor,
        classes: Tensor,
        generator: torch.Generator | None,
    ) -> Tensor:
        """A random point at half the linearised boundary distance (capped by eps) around ``x``."""
        f, w, _ = class_gradients(forward, x, y, classes)
        f_s, w_s = closest_boundary(f, w, self.norm)
        radius = perturbation_norms(project_hyperplane(w_s, -f_s, self.norm), self.norm)
        if self.threat is not None:
            radius = radius.clamp(max=self.threat.eps)
        u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        u = u / _bcast(perturbation_norms(u, self.norm).clamp_min(1e-12), x)
        return (x + 0.5 * _bcast(radius, x) * u).clamp(0.0, 1.0)


@ATTACKS.register("fab-t")
class FABT(FAB):
    """FAB-T: targeted FAB towards each of the top ``n_target_classes`` classes, keeping the smallest
    misclassification (the AutoAttack variant; untargeted interface)."""

    name = "fab-t"

    n_target_classes: int = param(9, integer)
    targeted = fixed(False)

    def perturb(self, model, x, y, target, generator):
        targets = top_k_targets(self._predict(model, x), y, self.n_target_classes)
        best = BestPoints(
            x, torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        )
        for k in range(targets.shape[1]):
            todo = best.remaining()
            if todo.numel() == 0:
                break
            cand, score = self.descend(model, x[todo], y[todo], targets[todo, k], None, generator)
            # a point broken within eps is done: nothing left to gain
            within = score >= -self.threat.eps if self.threat is not None else None
            best.offer(todo, cand, score, within)
        return best.x
