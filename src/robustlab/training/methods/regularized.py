"""Adversarial training with a clean term plus a robustness regulariser: TRADES, SCORE, MART, ARoW.

All four minimise a loss on the clean logits ``z = f(x)`` and the adversarial logits
``z' = f(x')`` of the same batch; they differ in the inner maximisation (a divergence to the clean
prediction for TRADES/SCORE/ARoW, CE for MART) and in the per-sample terms. The regularisers live
in :mod:`robustlab.losses.adversarial`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.losses.adversarial import (
    boosted_ce,
    divergence,
    kl_divergence,
    smooth_labels,
    soft_cross_entropy,
    true_class_prob,
)
from robustlab.threat import Threat
from robustlab.training.method import Batch, LossOutput, StepContext, forwards_base
from robustlab.training.methods.adversarial import PGDBased
from robustlab.training.methods.registry import METHODS
from robustlab.training.methods.shared import divergence_attack
from robustlab.training.schedules import ramped_threat
from robustlab.validation import check_positive


@forwards_base
class RegularizedAT(PGDBased):
    """Shared machinery: an inner attack (a divergence to the clean prediction, or PGD-CE when
    ``attack_divergence`` is None) and ``per_sample(z, z_adv, y) -> (natural, robust)`` terms."""

    attack_divergence: str | None = "kl"

    def __init__(self, threat: Threat | str = "linf:0.3", beta: float = 6.0, **base: Any) -> None:
        super().__init__(threat, **base)
        self.beta = check_positive(beta, "beta", allow_zero=True)

    def adversarial(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        if self.attack_divergence is None:
            return super().adversarial(model, batch, ctx)
        threat = ramped_threat(self.threat, ctx.eps_scale)
        if threat is None:
            return batch.x
        return divergence_attack(
            model, batch.x, threat, self.steps, self.step_size, self.attack_divergence
        )

    @abstractmethod
    def terms(self, z: Tensor, z_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample (natural, robust) terms; the loss is ``mean(natural + beta * robust)``."""

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        x_adv = self.adversarial(model, batch, ctx)
        z = model(batch.x)
        z_adv = model(x_adv)
        natural, robust = self.terms(z, z_adv, batch.y)
        beta = self.beta * ctx.scale("beta")  # the trainer's beta ramp (1.0 without one)
        loss = (natural + beta * robust).mean()
        metrics = {
            "natural": float(natural.detach().mean()),
            "robust": float(robust.detach().mean()),
            "adv_acc": float((z_adv.detach().argmax(1) == batch.y).float().mean()),
        }
        return LossOutput(loss, z, metrics)


@METHODS.register("trades")
class TRADES(RegularizedAT):
    """TRADES (Zhang et al., ICML 2019): clean CE plus beta times the worst-case KL to the clean
    prediction,

        min E[ CE(f(x), y) + beta * max_{x' in B(x)} KL(p(x) || p(x')) ],

    the inner maximum by PGD on the KL (``steps``, ``step_size``; default 2.5 eps / steps)."""

    name = "trades"

    def terms(self, z, z_adv, y):
        return F.cross_entropy(z, y, reduction="none"), kl_divergence(z, z_adv)


@METHODS.register("score")
@forwards_base
class SCORE(RegularizedAT):
    """SCORE (Pang et al., ICML 2022, "Robustness and accuracy could be reconcilable by (proper)
    definition"): the TRADES objective with the KL replaced by the squared Euclidean
    distance between probability vectors, the self-consistent robust error,

        min E[ L(f(x), y) + beta * max_{x' in B(x)} ||p(x) - p(x')||_2^2 ],

    with ``natural="ce"`` (default) or ``natural="se"`` (``||p(x) - e_y||^2``, the paper's SE loss)."""

    name = "score"
    attack_divergence = "se"

    def __init__(self, threat: Threat | str = "linf:0.3", *, natural: str = "ce", **base: Any) -> None:
        super().__init__(threat, **base)
        if natural not in ("ce", "se"):
            raise RobustlabError(f"natural must be 'ce' or 'se', got {natural!r}.")
        self.natural = natural

    def terms(self, z, z_adv, y):
        if self.natural == "ce":
            nat = F.cross_entropy(z, y, reduction="none")
        else:
            nat = (F.softmax(z.float(), 1) - F.one_hot(y, z.shape[1]).float()).pow(2).sum(1)
        return nat, divergence("se")(z, z_adv)


@METHODS.register("mart")
class MART(RegularizedAT):
    """MART (Wang et al., ICLR 2020): boosted CE at the PGD point plus a KL term weighted towards
    misclassified samples,

        min E[ BCE(f(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x)) ],

    with ``x'`` from PGD on CE and BCE the boosted CE ``-log p_y(x') - log(1 - max_{k!=y} p_k(x'))``."""

    name = "mart"
    attack_divergence = None

    def terms(self, z, z_adv, y):
        return boosted_ce(z_adv, y), kl_divergence(z, z_adv) * (1.0 - true_class_prob(z, y))


@METHODS.register("arow")
@forwards_base
class ARoW(RegularizedAT):
    """ARoW (Yang, Kong & Kim, ICML 2023, "Improving adversarial robustness by putting more
    regularizations on less robust samples"): label-smoothed clean CE plus a KL regulariser
    weighted by ``1 - p_y(x')``,

        min E[ CE_LS(f(x), y) + 2 lam * KL(p(x) || p(x')) * (1 - p_y(x')) ],

    with ``x'`` the TRADES KL attack, ``CE_LS`` the cross-entropy against labels smoothed to
    ``1 - smoothing`` on ``y`` (the rest spread evenly over the other classes), and ``beta`` playing the role of ``2 lam``."""

    name = "arow"

    def __init__(
        self, threat: Threat | str = "linf:0.3", *, smoothing: float = 0.2, **base: Any
    ) -> None:
        super().__init__(threat, **base)
        if not 0 <= smoothing < 1:
            raise RobustlabError(f"smoothing must be in [0, 1), got {smoothing!r}.")
        self.smoothing = float(smoothing)

    def terms(self, z, z_adv, y):
        target = smooth_labels(y, z.shape[1], 1.0 - self.smoothing)
        return soft_cross_entropy(z, target), kl_divergence(z, z_adv) * (
            1.0 - true_class_prob(z_adv, y)
        )
