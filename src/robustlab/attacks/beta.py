"""BETA, the best-targeted attack (Robey et al., ICLR 2024, "Adversarial training should be cast
as a non-zero-sum game", Algorithm 1; METHODS.md M86).

With the per-class margins ``M_j(x') = z_j(x') - z_y(x')``, the attacker runs, for every wrong
class ``j`` separately, projected steepest ascent on ``M_j`` from a random start, giving
``x'_j``, and keeps the point of the class whose own margin is largest:

    x* = x'_{j*},   j* = argmax_{j != y} M_j(x'_j).

The selection compares each candidate on the margin it was optimised for, not on its untargeted
margin ``max_{j'!=y} z_j' - z_y``. As in the paper every one of the K - 1 wrong classes is a target
by default (``n_targets`` restricts them to the top clean logits to save time). Each ``x'_j`` is
its iterate with the largest ``M_j``; with ``early_stop`` a target's ascent stops once the point
is classified as ``j`` (so the selected point is adversarial whenever one ``x'_j`` reached its
class). As an evaluation attack (``keep_adversarial``, the default) it never discards a
misclassified candidate: where the paper's pick is still classified correctly but another class's
candidate is not, the misclassified candidate with the largest own margin is kept instead, so the
attack is never weaker than the paper's. All targets run in one batch (N x T replicas). The same
attack, without early stopping and with the paper's selection alone, is the inner maximisation of
BETA adversarial training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustlab.attacks.ascent import projected_ascent
from robustlab.attacks.base import Attack, top_k_targets
from robustlab.attacks.objectives import is_adversarial
from robustlab.attacks.params import fixed, flag, integer, optional, param, positive
from robustlab.attacks.registry import ATTACKS


@ATTACKS.register("beta")
class BETA(Attack):
    """Best-targeted attack (Robey et al. 2024): one margin ascent per class, the best own margin
    kept."""

    name = "beta"
    supports_eot = True

    threat = param("linf:0.3")
    steps: int = param(40, integer)
    step_size: float | None = param(None, optional(positive))
    n_targets: int | None = param(None, optional(integer))
    early_stop: bool = param(True, flag)
    keep_adversarial: bool = param(True, flag)
    loss = fixed("target-margin")
    seed: int | None = param(0)

    def _check_params(self) -> None:
        if self.step_size is None:
            self.step_size = 2.5 * self.threat.eps / self.steps

    def perturb(self, model, x, y, target, generator):
        logits = self._predict(model, x)
        targets = (
            target[:, None]
            if self.targeted
            else top_k_targets(logits, y, self.n_targets or logits.shape[1] - 1)
        )
        t, n = targets.shape[1], x.shape[0]
        reps = (t,) + (1,) * (x.dim() - 1)
        xr, yr, tr = x.repeat(reps), y.repeat(t), targets.T.reshape(-1)
        x0 = self.threat.random_init(xr, generator)
        cand = projected_ascent(
            self, model, xr, x0, yr, tr, self.steps, lambda k: self.step_size,
            lambda k: self.objective, score=self.objective, stop=is_adversarial,
            early_stop=self.early_stop,
        )  # fmt: skip
        logits = self._predict(model, cand)
        own_margin = self.objective(logits, yr, tr).view(t, n)  # M_j(x'_j)
        adversarial = self._success(logits, yr, tr).view(t, n) if self.keep_adversarial else None
        best = best_targets(own_margin, adversarial)
        return cand.view(t, n, *x.shape[1:])[best, torch.arange(n, device=x.device)]


def best_targets(own_margin: Tensor, adversarial: Tensor | None = None) -> Tensor:
    """(N,) index of the kept class per point from the (T, N) own margins ``M_j(x'_j)``: the
    paper's ``argmax_j M_j(x'_j)``; given the (T, N) mask of misclassified candidates, a point whose
    pick is not misclassified while another candidate is takes the misclassified candidate with the
    largest own margin."""
    best = own_margin.argmax(0)
    if adversarial is None:
        return best
    fallback = own_margin.masked_fill(~adversarial, float("-inf")).argmax(0)
    picked = adversarial.gather(0, best[None]).squeeze(0)
    return torch.where(adversarial.any(0) & ~picked, fallback, best)
