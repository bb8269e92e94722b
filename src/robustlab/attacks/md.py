"""Margin-Decomposition attack (Ma et al., Machine Learning 2022, "Imbalanced gradients: a subtle
cause of overestimated adversarial robustness"; METHODS.md M24).

Defences with imbalanced gradients have one margin term whose gradient dominates the other, so
attacking the margin ``max_{j!=y} z_j - z_y`` directly gets stuck. MD attacks in two stages: for the
first ``stage1_steps`` it maximises one term alone, ``-z_y`` or ``max_{j!=y} z_j`` (alternating
over restarts), then the full margin, with a cosine-annealed step size from ``2 eps``. With
``n_targets`` it is the multi-targeted variant MD-MT: the same two stages toward each of the top
wrong classes in turn (``z_t``, ``-max_{j!=t} z_j``, then ``z_t - max_{j!=t} z_j``).
"""

from __future__ import annotations

import math

from robustlab.attacks.ascent import projected_ascent
from robustlab.attacks.base import Attack
from robustlab.attacks.params import fixed, integer, optional, param
from robustlab.attacks.registry import ATTACKS, OBJECTIVES
from robustlab.errors import RobustlabError

MD_TERMS = ("neg-true-logit", "max-other-logit")


@ATTACKS.register("md")
class MD(Attack):
    """Margin-Decomposition attack (Ma et al. 2022): one margin term first, then the margin."""

    name = "md"
    supports_eot = True

    threat = param("linf:0.3")
    steps: int = param(100, integer)
    stage1_steps: int | None = param(None)  # None: steps // 5
    n_targets: int | None = param(None, optional(integer))
    loss = fixed("margin")
    restarts: int = param(2)
    seed: int | None = param(0)

    def _check_params(self) -> None:
        given = self.stage1_steps
        self.stage1_steps = self.steps // 5 if given is None else int(given)
        if not 0 <= self.stage1_steps <= self.steps:
            raise RobustlabError(f"stage1_steps must be in [0, steps={self.steps}], got {given!r}.")

    def _step_size(self, k: int) -> float:
        """Cosine annealing from ``2 eps`` to 0 over the steps."""
        return self.threat.eps * (1 + math.cos(math.pi * k / self.steps))

    def perturb(self, model, x, y, target, generator):
        term = OBJECTIVES.get(MD_TERMS[getattr(self, "_restart", 0) % 2])

        def objective(k: int):
            return term if k < self.stage1_steps else self.objective

        def one(xs, ys, ts):
            x0 = self.threat.random_init(xs, generator)
            return projected_ascent(
                self, model, xs, x0, ys, ts, self.steps, self._step_size, objective
            )

        if self.n_targets is None or self.targeted:
            return one(x, y, target)
        return self.attack_over_targets(model, x, y, self.n_targets, one)
