"""Attack the points that remain, keep the best: the step shared by the loops that run attempts on
the points not yet done and keep each point's best candidate (the restarts of
:meth:`~robustlab.attacks.base.Attack.run`, the target sweeps of
:meth:`~robustlab.attacks.base.Attack.attack_over_targets` and FAB-T, the attacks of AutoAttack).
"""

from __future__ import annotations

import torch
from torch import Tensor


class BestPoints:
    """Per sample of a batch: the best point so far, its score (higher is better) and whether the
    sample is done (no longer attacked)."""

    def __init__(self, x: Tensor, score: Tensor, done: Tensor | None = None) -> None:
        self.x = x.clone()
        self.score = score
        self.done = done if done is not None else torch.zeros_like(score, dtype=torch.bool)

    def remaining(self) -> Tensor:
        """Indices of the samples not done, in increasing order."""
        return (~self.done).nonzero().squeeze(1)

    def offer(
        self,
        todo: Tensor,
        candidate: Tensor,
        score: Tensor,
        done: Tensor | None = None,
        *,
        prefer_done: bool = False,
    ) -> None:
        """Candidates for the samples ``todo``: each replaces the best point where its score is
        higher (with ``prefer_done``: or where it is ``done``); the samples ``done`` (for instance
        adversarial now) are not attacked further."""
        better = score > self.score[todo]
        if prefer_done:
            better |= done
        rows = todo[better]
        self.x[rows] = candidate[better]
        self.score[rows] = score[better]
        if done is not None:
            self.done[todo] |= done
