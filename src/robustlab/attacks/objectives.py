"""Per-sample objectives an attack maximises, and the success criterion.

Each objective maps ``(logits (N, K), y (N,), target (N,) or None)`` to a per-sample value (N,)
that is larger when the input is more adversarial: untargeted attacks push away from ``y``,
targeted attacks pull toward ``target``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.attacks.registry import OBJECTIVES
from robustlab.errors import RobustlabError

Objective = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def other_max(logits: Tensor, cls: Tensor) -> Tensor:
    """``max_{j != cls} z_j`` per sample."""
    masked = logits.scatter(1, cls[:, None], float("-inf"))
    return masked.max(1).values


def margin(logits: Tensor, cls: Tensor) -> Tensor:
    """Logit margin ``z_cls - max_{j != cls} z_j``: positive iff ``cls`` is the prediction."""
    return logits.gather(1, cls[:, None]).squeeze(1) - other_max(logits, cls)


@OBJECTIVES.register("ce")
def ce_objective(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Cross-entropy: ``CE(z, y)`` untargeted, ``-CE(z, t)`` targeted."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


@OBJECTIVES.register("margin")
def margin_objective(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """C&W margin (Carlini & Wagner 2017): ``max_{j!=y} z_j - z_y``, or ``z_t - max_{j!=t} z_j``."""
    if target is None:
        return -margin(logits, y)
    return margin(logits, target)


def is_adversarial(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Success mask: misclassified (untargeted) or classified as ``target`` (targeted)."""
    pred = logits.argmax(1)
    return pred != y if target is None else pred == target


def adversarial_score(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """How adversarial a point is, comparable across restarts and attacks (the margin objective)."""
    with torch.no_grad():
        return margin_objective(logits, y, target)


@OBJECTIVES.register("dlr")
def dlr_objective(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Difference of logits ratio (Croce & Hein, ICML 2020, eqs. 6 and 7), shift and scale invariant.

    Untargeted: ``-(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``z_pi1 >= z_pi2 >= ...`` the sorted
    logits. Both are maximised; the denominator gets ``1e-12`` against division by zero.
    """
    if logits.shape[1] < (3 if target is None else 4):
        raise RobustlabError(
            f"the DLR loss needs at least {3 if target is None else 4} classes "
            f"({'untargeted' if target is None else 'targeted'}), got {logits.shape[1]}."
        )
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        return -(z_y - other_max(logits, y)) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    scale = z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12
    return -(z_y - z_t) / scale


@OBJECTIVES.register("target-margin")
def target_margin_objective(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Negative margin toward one class, ``z_t - z_y`` (the per-target objective of BETA, Robey et
    al. 2024); without a target it is the C&W margin ``max_{j!=y} z_j - z_y``."""
    if target is None:
        return -margin(logits, y)
    return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)


@OBJECTIVES.register("neg-true-logit")
def neg_true_logit_objective(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """First margin term of the MD attack (Ma et al. 2021): ``-z_y`` (``z_t`` when targeted)."""
    if target is None:
        return -logits.gather(1, y[:, None]).squeeze(1)
    return logits.gather(1, target[:, None]).squeeze(1)


@OBJECTIVES.register("max-other-logit")
def max_other_logit_objective(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Second margin term of the MD attack (Ma et al. 2021): ``max_{j!=y} z_j`` (``-max_{j!=t}
    z_j`` when targeted)."""
    if target is None:
        return other_max(logits, y)
    return -other_max(logits, target)
