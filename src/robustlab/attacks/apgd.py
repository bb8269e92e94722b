"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), Linf and L2, and l1-APGD (Croce & Hein, ICCV 2021,
"Mind the box").

APGD is PGD with momentum and a step size that adapts itself (Algorithm 1 of the paper):

    z_{k+1} = P(x_k + eta_k s(grad f(x_k)))
    x_{k+1} = P(x_k + a (z_{k+1} - x_k) + (1 - a)(x_k - x_{k-1})),   a = 0.75 (a = 1 at k = 0)

starting from ``eta_0 = 2 eps`` (``eps`` for L1). At the checkpoints ``w_j = ceil(p_j N)`` with
``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` the step size of a sample
is halved and its iterate reset to its best point when (1) fewer than ``rho = 0.75`` of the steps
since the last checkpoint increased the objective, or (2) neither the step size nor the best
objective changed since the last checkpoint. For L1 the projection is the exact one onto the L1
ball ∩ box, the step is a sparse top-k sign step whose k shrinks with the step size, and the
checkpoints come every 4 % of the iterations (Croce & Hein 2021).

APGD-T (targeted DLR, eq. 7) runs one targeted APGD per wrong class among the top ``n_targets``
(9 in AutoAttack), each on the points still robust.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.attacks.l1_box import project_l1_box, sparse_l1_direction
from robustlab.attacks.objectives import Objective
from robustlab.attacks.params import fixed, flag, fraction, integer, param, positive
from robustlab.attacks.registry import ATTACKS


def apgd_checkpoints(steps: int, norm: str = "linf") -> list[int]:
    """Iterations after which APGD may halve its step size (Croce & Hein 2020, Sec. 3.2)."""
    if norm == "l1":
        period = max(int(0.04 * steps), 1)
        return list(range(period, steps, period))
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(round(pj * steps, 9)) for pj in p[1:]}  # round away float noise
    return sorted(w for w in marks if 0 < w < steps)


def _col(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


@ATTACKS.register("apgd")
class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020): step-size-free PGD with momentum; Linf, L2 and L1."""

    name = "apgd"
    default_loss = "ce"
    supports_eot = True

    threat = param("linf:0.3")
    steps: int = param(100, integer)
    rho: float = param(0.75, positive)
    momentum: float = param(0.75, fraction)
    early_stop: bool = param(True, flag)
    l1_topk: float = param(0.2, positive)
    loss: str | Objective | None = param(None)  # None: the class's default_loss
    seed: int | None = param(0)

    def _check_params(self) -> None:
        #: with ``record_trace = True`` the best objective per point after each iteration,
        #: (steps + 1, N) of the last :meth:`perturb` call (used by the attack-failure checks)
        self.record_trace = False
        self.trace: Tensor | None = None

    # ----------------------------------------------------------------- geometry per norm
    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        if self.threat.norm == "l1":
            return project_l1_box(x_adv, x, self.threat.eps)
        return self.threat.project(x_adv, x)

    def _direction(self, grad: Tensor, x_adv: Tensor, topk: Tensor) -> Tensor:
        if self.threat.norm == "l1":
            return sparse_l1_direction(grad, x_adv, topk * grad[0].numel())
        return self.threat.steepest_direction(grad, x_adv)

    # ----------------------------------------------------------------- the algorithm
    def perturb(self, model, x, y, target, generator):
        return self.apgd(model, x, y, target, generator)

    def apgd(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, generator
    ) -> Tensor:
        """One APGD run from a random start; returns the first adversarial point found for each
        sample, or its highest-objective point."""
        n, eps, l1 = x.shape[0], self.threat.eps, self.threat.norm == "l1"
        if l1 and eps > 0:  # sparse start: a Gaussian draw projected onto the L1 ball ∩ box
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_cur = project_l1_box(x + noise, x, eps)
        else:
            x_cur = self.threat.random_init(x, generator) if eps > 0 else x.clone()
        logits, loss, grad = self.loss_gradient(model, x_cur, y, target)
        found = self._success(logits, y, target)
        x_out, x_best, x_prev = x_cur.clone(), x_cur.clone(), x_cur.clone()
        loss_best, loss_prev, grad_best = loss.clone(), loss.clone(), grad.clone()
        eta = torch.full((n,), (1.0 if l1 else 2.0) * eps, dtype=x.dtype, device=x.device)
        topk = torch.full_like(eta, self.l1_topk)
        min_topk = 1.0 / x[0].numel()
        sparsity_last = torch.full_like(eta, float(x[0].numel()))
        increases = torch.zeros_like(eta)
        eta_last, loss_best_last, last_ckpt = eta.clone(), loss_best.clone(), 0
        checkpoints = set(apgd_checkpoints(self.steps, self.threat.norm))
        trace = [loss_best.clone()] if self.record_trace else None
        active = (
            (~found).nonzero().squeeze(1) if self.early_stop else torch.arange(n, device=x.device)
        )
        for k in range(self.steps if eps > 0 else 0):
            if active.numel() > 0:
                a = active
                xa, xa_prev, xs = x_cur[a], x_prev[a], x[a]
                ta = target[a] if target is not None else None
                step = _col(eta[a], xa) * self._direction(grad[a], xa, topk[a])
                z = self._project(xa + step, xs)
                if k > 0:
                    m = self.momentum
                    z = self._project(xa + m * (z - xa) + (1 - m) * (xa - xa_prev), xs)
                x_prev[a], x_cur[a] = xa, z
                logits, loss, g = self.loss_gradient(model, z, y[a], ta)
                grad[a] = g
                increases[a] += (loss > loss_prev[a]).to(eta.dtype)
                loss_prev[a] = loss
                better = loss > loss_best[a]
                ib = a[better]
                x_best[ib], loss_best[ib], grad_best[ib] = z[better], loss[better], g[better]
                hit = self._success(logits, y[a], ta) & ~found[a]
                x_out[a[hit]] = z[hit]
                found[a[hit]] = True
                if self.early_stop:
                    active = a[~hit]
            if trace is not None:
                trace.append(loss_best.clone())
            if k + 1 in checkpoints:
                span = k + 1 - last_ckpt
                stalled = (eta_last == eta) & (loss_best_last == loss_best)
                reduce = (increases < self.rho * span) | stalled
                if l1:  # adaptive sparsity (Croce & Hein 2021): k follows the best point's L0
                    sparsity = (x_best - x).flatten(1).ne(0).sum(1).to(eta.dtype)
                    shrunk = sparsity < 0.95 * sparsity_last
                    topk = (sparsity / (1.5 * x[0].numel())).clamp(min_topk, 1.0)
                    sparsity_last = sparsity
                    eta_red = torch.where(shrunk, torch.full_like(eta, eps), eta / 1.5)
                    eta = torch.where(reduce, eta_red.clamp(eps / 10, eps), eta)
                else:
                    eta = torch.where(reduce, eta / 2, eta)
                r = reduce.nonzero().squeeze(1)
                x_cur[r], x_prev[r], grad[r] = x_best[r], x_best[r], grad_best[r]
                eta_last, loss_best_last, last_ckpt = eta.clone(), loss_best.clone(), k + 1
                increases.zero_()
            if active.numel() == 0 and trace is None:
                break
        if trace is not None:
            self.trace = torch.stack(trace)
        return torch.where(_col(found, x), x_out, x_best)


@ATTACKS.register("apgd-ce")
class APGDCE(APGD):
    """APGD on the cross-entropy loss (the first attack of AutoAttack)."""

    name = "apgd-ce"
    default_loss = "ce"


@ATTACKS.register("apgd-dlr")
class APGDDLR(APGD):
    """APGD on the difference-of-logits-ratio loss (Croce & Hein 2020, eq. 6)."""

    name = "apgd-dlr"
    default_loss = "dlr"


@ATTACKS.register("apgd-t")
class APGDT(APGD):
    """APGD-T: targeted-DLR APGD over the top-k wrong classes, each on the points still robust."""

    name = "apgd-t"
    default_loss = "dlr"

    n_targets: int = param(9, integer)
    targeted = fixed(False)

    def perturb(self, model, x, y, target, generator):
        return self.attack_over_targets(
            model, x, y, self.n_targets, lambda xs, ys, ts: self.apgd(model, xs, ys, ts, generator)
        )
