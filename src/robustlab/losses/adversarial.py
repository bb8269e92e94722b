"""Loss terms shared by the adversarial-training methods (:mod:`robustlab.training.methods`).

Every function here returns **per-sample** values ``(N,)`` (or weights) so that a method can
reweight, mask or average them as its paper says. Notation: logits ``z`` (N, K), probabilities
``p = softmax(z)``, labels ``y``; ``z_nat`` are the logits on clean inputs and ``z_adv`` those on
perturbed inputs.

- :func:`kl_divergence`: ``KL(p_ref || p)`` (TRADES, MART, ARoW, VAT, MTARD, Mutual AT);
- :func:`squared_distance`: ``||p_a - p_b||_2^2`` (SCORE);
- :func:`boosted_ce`: MART's boosted cross-entropy;
- :func:`soft_cross_entropy` and :func:`smooth_labels`: CE against a distribution (AVmixup, ARoW,
  ADR, IAT);
- :func:`one_vs_rest`: the one-vs-the-rest sigmoid loss (SOVR);
- :func:`kl_dro_weights` and :func:`hr_weights`: the worst-case reweightings of a batch of losses
  (DONE's KL-DRO closed form; the holistic-robust (HR) ball of Bennouna et al.).

These are not registered in :data:`robustlab.losses.LOSSES`: none of them has the plain
``(logits, target) -> scalar`` signature of a classification loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.errors import RobustlabError
from robustlab.validation import check_positive


def kl_divergence(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(softmax(ref_logits) || softmax(logits))`` per sample (the TRADES regulariser).

    Gradients flow into both arguments; detach ``ref_logits`` for a fixed target.
    """
    log_ref = F.log_softmax(ref_logits.float(), dim=1)
    log_p = F.log_softmax(logits.float(), dim=1)
    return (log_ref.exp() * (log_ref - log_p)).sum(1)


def squared_distance(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """``||softmax(a) - softmax(b)||_2^2`` per sample (SCORE's self-consistent distance)."""
    diff = F.softmax(logits_a.float(), dim=1) - F.softmax(logits_b.float(), dim=1)
    return diff.pow(2).sum(1)


DIVERGENCES = {"kl": kl_divergence, "se": squared_distance}


def divergence(name: str):
    """The per-sample divergence ``name`` (``"kl"`` or ``"se"``)."""
    if name not in DIVERGENCES:
        raise RobustlabError(
            f"Unknown divergence {name!r}; known divergences: {', '.join(DIVERGENCES)}."
        )
    return DIVERGENCES[name]


def true_class_prob(logits: Tensor, y: Tensor) -> Tensor:
    """``p_y`` per sample."""
    return F.softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)


def boosted_ce(logits: Tensor, y: Tensor) -> Tensor:
    """MART's boosted CE (Wang et al. 2020): ``-log p_y - log(1 - max_{k != y} p_k)``."""
    log_p = F.log_softmax(logits.float(), dim=1)
    other = log_p.scatter(1, y[:, None], float("-inf")).max(1).values
    # log(1 - max_k p_k) from its log, without cancellation; clamped as MART's reference does.
    log_rest = torch.log((-torch.expm1(other)).clamp_min(1e-12))
    return -log_p.gather(1, y[:, None]).squeeze(1) - log_rest


def smooth_labels(y: Tensor, num_classes: int, confidence: float | Tensor) -> Tensor:
    """Label-smoothed targets: ``confidence`` on ``y`` and ``(1 - confidence) / (K - 1)`` on
    every other class (AVmixup's ``phi(y, lambda)``; ARoW's smoothed CE). ``confidence`` may be a
    per-sample tensor (N,)."""
    conf = torch.as_tensor(confidence, dtype=torch.float32, device=y.device).reshape(-1, 1)
    one_hot = F.one_hot(y, num_classes).float()
    return one_hot * conf + (1.0 - one_hot) * (1.0 - conf) / (num_classes - 1)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``-sum_k t_k log p_k`` per sample for a target distribution ``t`` (N, K)."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1)


def one_vs_rest(logits: Tensor, y: Tensor) -> Tensor:
    """One-vs-the-rest loss (Kanai et al. 2023):
    ``log(1 + e^{-z_y}) + sum_{k != y} log(1 + e^{z_k})``, i.e. a binary logistic loss per class."""
    z = logits.float()
    sign = 1.0 - 2.0 * F.one_hot(y, z.shape[1]).float()  # -1 on the label, +1 elsewhere
    return F.softplus(sign * z).sum(1)


def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{k != y} z_k`` per sample (positive iff correctly classified)."""
    z = logits.float()
    return (
        z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], float("-inf")).max(1).values
    )


def log_mean_exp(values: Tensor) -> Tensor:
    """``log mean_i exp(v_i)`` without overflow."""
    return torch.logsumexp(values, 0) - math.log(values.numel())


def kl_dro_weights(losses: Tensor, tau: float, log_normalizer: Tensor | None = None) -> Tensor:
    """Worst-case weights of a KL-regularised DRO (DONE, Zhang et al. 2024): the maximiser
    of ``sum_i w_i l_i - tau KL(w || uniform)`` over the simplex, ``w_i = exp(l_i / tau) / u``
    with ``u = mean_j exp(l_j / tau)``, i.e. ``N softmax(l / tau)``.

    ``log_normalizer`` replaces ``log u`` by an estimate from outside the batch (DONE's running
    average). Returned detached, with mean 1 under the batch normaliser, so that ``(w * l).mean()``
    is the weighted loss.
    """
    check_positive(tau, "tau")
    scaled = losses.detach().float() / tau
    log_u = log_mean_exp(scaled) if log_normalizer is None else log_normalizer
    return torch.exp(scaled - log_u)


def hr_weights(losses: Tensor, alpha: float, r: float) -> tuple[Tensor, Tensor]:
    """Worst-case distribution of the holistic-robust (HR) loss (Bennouna et al., ICML 2023).

    The HR loss of a batch of (already adversarial) losses ``l_1..l_N`` is

        max { sum_i p_i l_i + p_w max_j l_j :  KL(q || p) <= r,  q_i <= 1/N,  q_w <= alpha }

    over distributions ``p`` and ``q`` on the N samples plus one worst point ``w``: a fraction
    ``alpha`` of the data may be poisoned (moved to the worst point) and the rest is uncertain
    within a KL ball of radius ``r``. Its dual (minimax swap; the inner problem is linear in q)
    has a closed form: ``q`` puts ``alpha`` on the worst point and ``1/N`` on the largest losses
    until it sums to one, and ``p_i = lam q_i / (eta - l_i)`` with ``eta`` the minimiser of the
    convex ``h(eta) = eta - e^{-r} prod_i (eta - l_i)^{q_i}`` on ``eta >= max l`` and
    ``lam = e^{-r} prod_i (eta - l_i)^{q_i}``. ``eta`` is found by bisection on ``h'``.

    Returns ``(p, p_w)`` detached: ``p`` (N,) the weights of the samples and ``p_w`` the weight of
    the worst point, so the HR loss is ``(p * l).sum() + p_w * l.max()`` (Danskin: the weights
    carry no gradient).
    """
    if not 0 <= alpha < 1:
        raise RobustlabError(f"alpha (the poisoned fraction) must be in [0, 1), got {alpha!r}.")
    check_positive(r, "r", allow_zero=True)
    loss = losses.detach().double().cpu().flatten()  # a scalar bisection: cheaper on the host
    n = loss.numel()
    order = loss.argsort(descending=True)
    # q: alpha on the worst point; 1/N on the largest losses (greedy) up to a total of 1 - alpha.
    filled = torch.arange(n, device=loss.device, dtype=loss.dtype) / n  # mass before each entry
    q_sorted = (1.0 - alpha - filled).clamp(0.0, 1.0 / n)
    q = torch.empty_like(loss).scatter_(0, order, q_sorted)
    q_w = alpha
    top = float(loss.max())
    if r == 0:  # no KL ball: p = q
        return q.to(losses), loss.new_tensor(q_w).to(losses)
    lv = torch.cat([loss, loss.new_tensor([top])])
    qv = torch.cat([q, q.new_tensor([q_w])])
    support = qv > 0

    def lam_and_p(eta: float) -> tuple[float, Tensor]:
        gap = (eta - lv[support]).clamp_min(1e-300)
        lam = math.exp(-r + float((qv[support] * gap.log()).sum()))
        p = torch.zeros_like(lv)
        p[support] = lam * qv[support] / gap
        return lam, p

    def slope(eta: float) -> float:  # h'(eta) = 1 - sum_i p_i(eta)
        return 1.0 - float(lam_and_p(eta)[1].sum())

    spread = max(float(loss.max() - loss.min()), 1e-6)
    lo, hi = top, top + spread
    while slope(hi) < 0:  # h' -> 1 - e^{-r} > 0 as eta grows, so this terminates
        lo, hi = hi, hi + 2 * (hi - top)
    # The largest loss always carries q > 0, so h' -> -inf as eta -> max l (the minimiser is
    # interior, bracketed by h'(lo) < 0 <= h'(hi)) unless all of q sits on the largest value;
    # then the bisection ends at eta = max l and the normalised p, on max-valued entries only,
    # is exact as well.
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if slope(mid) < 0:
            lo = mid
        else:
            hi = mid
    _, mass = lam_and_p(0.5 * (lo + hi))
    mass = mass / mass.sum()
    return mass[:-1].to(losses), mass[-1].to(losses)
