"""PGD-AT with per-sample or per-class weighting of the adversarial losses: DONE, HR, DAFA, SOVR.

Each computes the per-sample losses at the PGD points ``x'`` and combines them differently:
DONE and HR with the worst-case distributions of a DRO ball (the weights in
:mod:`robustlab.losses.adversarial`), DAFA with class-wise weights and radii learnt from class
similarity, SOVR by switching the loss of the samples with the smallest margins.

State that a step changes (DONE's running normaliser, DAFA's statistics) is staged in
``compute_loss`` and committed in ``after_optimizer_step``, so a second loss evaluation in the
same step (SAM) sees the same state.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.losses.adversarial import (
    hr_weights,
    kl_dro_weights,
    log_mean_exp,
    logit_margin,
    one_vs_rest,
)
from robustlab.threat import Threat
from robustlab.training.method import Batch, LossOutput, StepContext, forwards_base
from robustlab.training.methods.adversarial import PGDBased
from robustlab.training.methods.registry import METHODS
from robustlab.training.schedules import ramped_threat
from robustlab.validation import check_int, check_positive


class ReweightedAT(PGDBased):
    """PGD-AT whose per-sample CE losses at ``x'`` are combined by :meth:`combine`."""

    @abstractmethod
    def combine(self, losses: Tensor, logits: Tensor, batch: Batch) -> tuple[Tensor, dict]:
        """Implemented by each subclass."""

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        x_adv = self.adversarial(model, batch, ctx)
        logits = model(x_adv)
        losses = F.cross_entropy(logits, batch.y, reduction="none")
        loss, metrics = self.combine(losses, logits, batch)
        metrics["adv_ce"] = float(losses.detach().mean())
        return LossOutput(loss, logits, metrics)


@METHODS.register("done")
@forwards_base
class DONE(ReweightedAT):
    """Doubly robust instance-reweighted AT (DONE; Zhang et al., ICLR 2024): PGD-AT with the
    KL-DRO weights ``exp(l_i / tau)`` on the adversarial losses.

    The instance weights are the closed-form solution of the KL-regularised DRO over the training
    distribution, ``w_i = exp(l_i / tau) / E_j[exp(l_j / tau)]`` on the adversarial losses, and the
    normaliser is tracked across batches by a running average (the compositional estimator
    ``u <- (1 - rho) u + rho * mean_batch exp(l / tau)``, kept in log space as a buffer).
    ``rho = 1`` is the per-batch softmax. Loss: ``mean_i w_i l_i``.
    """

    name = "done"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        tau: float = 1.0,
        rho: float = 0.1,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        self.tau = check_positive(tau, "tau")
        self.rho = check_positive(rho, "rho")
        if self.rho > 1:
            raise RobustlabError(f"rho must be in (0, 1], got {rho!r}.")
        self.register_buffer("log_normalizer", torch.tensor(float("nan")))
        self._staged: Tensor | None = None

    def combine(self, losses, logits, batch):
        batch_log_mean = log_mean_exp(losses.detach().float() / self.tau)
        prev = self.log_normalizer
        if torch.isnan(prev) or self.rho == 1:
            log_u = batch_log_mean
        else:  # log((1 - rho) u + rho m) without overflow
            log_u = torch.logaddexp(
                prev + math.log1p(-self.rho), batch_log_mean + math.log(self.rho)
            )
        self._staged = log_u.detach()
        w = kl_dro_weights(losses, self.tau, log_u)
        return (w * losses).mean(), {"weight_max": float(w.max())}

    def after_optimizer_step(self, model: nn.Module) -> None:
        if self._staged is not None:
            self.log_normalizer.copy_(self._staged)
            self._staged = None


@METHODS.register("hr")
@forwards_base
class HR(ReweightedAT):
    """Holistic robust training (Bennouna, Lucas & Van Parys, ICML 2023, "Certified robust neural
    networks: generalization and corruption resistance", the HR loss):

        max { sum_i p_i l_i + p_w max_j l_j : KL(q || p) <= r, q_i <= 1/N, q_w <= alpha },

    with ``l_i`` the adversarial loss at the PGD point (evasion ball ``threat``), ``alpha`` the
    fraction of possibly poisoned samples and ``r`` the KL radius against statistical error. The
    worst-case weights come from the closed-form dual (:func:`robustlab.losses.adversarial.hr_weights`).
    The loss is a batch-level functional, not a mean of per-sample terms.
    """

    name = "hr"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        alpha: float = 0.01,
        r: float = 0.1,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        if not 0 <= alpha < 1:
            raise RobustlabError(f"alpha must be in [0, 1), got {alpha!r}.")
        self.alpha = float(alpha)
        self.r = check_positive(r, "r", allow_zero=True)

    def combine(self, losses, logits, batch):
        p, p_worst = hr_weights(losses, self.alpha, self.r)
        loss = (p * losses).sum() + p_worst * losses.max()
        return loss, {"worst_weight": float(p_worst), "max_weight": float(p.max())}


@METHODS.register("dafa")
@forwards_base
class DAFA(ReweightedAT):
    """Distance-aware fair adversarial training (DAFA; Lee et al., ICLR 2024): class-wise loss
    weights and radii from class similarity.

    Class ``c`` gets a loss weight ``W_c`` and a training radius ``W_c * eps``. Both start at 1;
    after ``warmup_epochs`` they are set once from class similarity,

        W_c = 1 + lam * sum_{j != c} (P[c, j] - P[j, c]),

    where ``P[c, j]`` is the mean probability of class ``j`` on the adversarial examples of class
    ``c`` (accumulated during the last warm-up epoch): a class whose samples leak probability to
    similar classes gains weight and margin at the expense of those classes. The weights sum to K.
    Loss: ``mean_i W_{y_i} CE(f(x'_i), y_i)`` with ``x'_i`` in the ball of radius ``W_{y_i} eps``.
    """

    name = "dafa"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        lam: float = 1.0,
        warmup_epochs: int = 1,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        self.lam = check_positive(lam, "lam", allow_zero=True)
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs", minimum=0)
        self.register_buffer("class_weights", torch.ones(0))
        self.register_buffer("prob_sums", torch.zeros(0, 0))
        self.register_buffer("counts", torch.zeros(0))
        self._staged: tuple[Tensor, Tensor] | None = None
        self._epoch = 0

    def setup(self, trainer) -> None:
        self.resize(trainer.train_data.num_classes)

    def resize(self, k: int) -> None:
        if self.class_weights.numel() != k:
            device = self.class_weights.device
            self.class_weights = torch.ones(k, device=device)
            self.prob_sums = torch.zeros(k, k, device=device)
            self.counts = torch.zeros(k, device=device)

    def adversarial(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        """PGD with class-wise radius ``W_c * eps`` (one PGD call per distinct radius)."""
        if self.class_weights.numel() == 0 or bool((self.class_weights == 1).all()):
            return super().adversarial(model, batch, ctx)
        x_adv = batch.x.clone()
        scales = self.class_weights[batch.y]
        for s in scales.unique():
            threat = ramped_threat(self.threat.with_eps(self.threat.eps * float(s)), ctx.eps_scale)
            if threat is None:
                continue
            idx = (scales == s).nonzero().squeeze(1)
            x_adv[idx] = self.make_attack(threat).maximize(model, batch.x[idx], batch.y[idx])
        return x_adv

    def combine(self, losses, logits, batch):
        k = logits.shape[1]
        self.resize(k)
        w = self.class_weights[batch.y]
        if self._epoch == self.warmup_epochs - 1:  # statistics of the last warm-up epoch
            probs = F.softmax(logits.detach().float(), 1)
            sums = torch.zeros(k, k, device=probs.device).index_add_(0, batch.y, probs)
            counts = torch.bincount(batch.y, minlength=k).float()
            self._staged = (sums, counts)
        return (w * losses).mean(), {}

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self._epoch = epoch

    def after_optimizer_step(self, model: nn.Module) -> None:
        if self._staged is not None:
            self.prob_sums += self._staged[0]
            self.counts += self._staged[1]
            self._staged = None

    def on_epoch_end(self, trainer, epoch: int) -> dict[str, float]:
        if epoch == self.warmup_epochs - 1 and self.counts.sum() > 0:
            self.update_weights()
        return (
            {"class_weight_min": float(self.class_weights.min())} if len(self.class_weights) else {}
        )

    @torch.no_grad()
    def update_weights(self) -> None:
        """Set ``W`` from the accumulated class-similarity matrix (the rule above)."""
        sim = self.prob_sums / self.counts.clamp_min(1)[:, None]
        sim.fill_diagonal_(0)
        self.class_weights.copy_(1.0 + self.lam * (sim.sum(1) - sim.sum(0)))
        self.class_weights.clamp_(min=0.0)


@METHODS.register("sovr")
@forwards_base
class SOVR(ReweightedAT):
    """Switching one-vs-the-rest loss (SOVR; Kanai et al. 2023, "Switching one-versus-the-rest
    loss to increase the margin of logits for adversarial robustness"): the ``fraction`` of the batch with the smallest logit margins
    ``z_y - max_{k!=y} z_k`` at the PGD point (the important samples) is trained with the
    one-vs-the-rest loss ``log(1 + e^{-z_y}) + sum_{k!=y} log(1 + e^{z_k})``, the rest with CE."""

    name = "sovr"

    def __init__(
        self, threat: Threat | str = "linf:0.3", fraction: float = 0.4, **base: Any
    ) -> None:
        super().__init__(threat, **base)
        if not 0 <= fraction <= 1:
            raise RobustlabError(f"fraction must be in [0, 1], got {fraction!r}.")
        self.fraction = float(fraction)

    def combine(self, losses, logits, batch):
        margins = logit_margin(logits.detach(), batch.y)
        m = int(round(self.fraction * margins.numel()))
        important = torch.zeros_like(margins, dtype=torch.bool)
        if m > 0:
            important[margins.topk(m, largest=False).indices] = True
        per_sample = torch.where(important, one_vs_rest(logits, batch.y), losses)
        return per_sample.mean(), {"mean_margin": float(margins.mean())}
