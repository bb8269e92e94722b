"""Projected steepest ascent with a step-size schedule and an objective schedule, shared by the
attacks that are PGD variants with their own schedules (MD, BETA).

Each step moves ``x`` along the threat's steepest-ascent direction of the objective of that step
and projects onto the ball ∩ box, ``x_{k+1} = P(x_k + eta_k s(grad L_k(x_k)))``. The iterate with
the best ``score`` seen so far is kept (by default the attack's margin: untargeted, or toward the
target for targeted attacks) and returned; with ``early_stop`` a point stops as soon as ``stop``
holds (by default: the attack succeeded, so the first adversarial iterate is returned). Gradients
go through :meth:`Attack.loss_gradient`, so EOT applies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.attacks.objectives import Objective, adversarial_score

#: ``(logits (N, K), y (N,), target (N,) or None) -> (N,)``: a score or a stopping mask
Criterion = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def projected_ascent(
    attack: Attack,
    model: nn.Module,
    x: Tensor,
    x_start: Tensor,
    y: Tensor,
    target: Tensor | None,
    steps: int,
    step_size: Callable[[int], float],
    objective: Callable[[int], Objective],
    l1_sparsity: float = 0.95,
    *,
    score: Criterion | None = None,
    stop: Criterion | None = None,
    early_stop: bool = True,
) -> Tensor:
    """Run ``steps`` ascent steps from ``x_start``; returns one candidate per point: its
    highest-``score`` iterate (the start and the last iterate included)."""
    threat = attack.threat
    if score is None:

        def score(logits: Tensor, y: Tensor, t: Tensor | None) -> Tensor:
            return adversarial_score(logits, y, t if attack.targeted else None)

    stop = stop or attack._success
    x_cur = threat.project(x_start, x)
    x_best = x_cur.clone()
    best = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
    active = torch.arange(x.shape[0], device=x.device)
    for k in range(steps + 1):
        a = active
        ta = target[a] if target is not None else None
        if k < steps:
            logits, _, grad = attack.loss_gradient(model, x_cur[a], y[a], ta, objective(k))
        else:  # the last iterate is only evaluated
            logits = attack._predict(model, x_cur[a])
        with torch.no_grad():
            value = score(logits, y[a], ta)
        better = value > best[a]
        x_best[a[better]], best[a[better]] = x_cur[a][better], value[better]
        if k == steps:
            break
        keep = ~stop(logits, y[a], ta) if early_stop else torch.ones_like(better)
        active = a[keep]
        if active.numel() == 0:
            break
        xa, g = x_cur[a][keep], grad[keep]
        step = step_size(k) * threat.steepest_direction(g, xa, l1_sparsity)
        x_cur[active] = threat.project(xa + step, x[active])
    return x_best
