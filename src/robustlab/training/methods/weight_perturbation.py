"""Adversarial weight perturbation on top of an adversarial-training method: AWP and RWP.

Both perturb the weights to ``w + v`` before the loss is evaluated, so that its gradient is taken
at the perturbed point, and remove ``v`` in :meth:`before_optimizer_step`, so the optimiser steps
from ``w`` (Wu et al. 2020 restore after the step; for the update itself the two orders agree up
to weight decay). ``v`` is layer-wise, projected onto ``||v_l|| <= gamma ||w_l||`` after every
ascent step (:func:`~robustlab.training.methods.shared.adversarial_weight_perturbation`). Each
``compute_loss`` call undoes exactly its own perturbation, so the methods compose with SAM, which
evaluates the loss twice per step.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.threat import Threat
from robustlab.training.method import Batch, LossOutput, Method, StepContext
from robustlab.training.methods.adversarial import AdversarialMethod
from robustlab.training.methods.registry import METHODS
from robustlab.training.methods.shared import (
    WeightShift,
    adversarial_weight_perturbation,
    fixed_adversarial,
    perturbable,
)
from robustlab.validation import check_int, check_positive

BASES = ("pgd-at", "trades")


class WeightPerturbed(Method):
    """Shared machinery: a base adversarial method, the perturbation, its removal."""

    def __init__(
        self,
        threat: Threat | str,
        base: str,
        gamma: float,
        steps: int,
        warmup_epochs: int,
        base_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        if base not in BASES:
            raise RobustlabError(f"Unknown base method {base!r}; valid bases: {', '.join(BASES)}.")
        self.base_name = base
        self.base: AdversarialMethod = METHODS.build(base, threat=threat, **base_kwargs)
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        self.wp_steps = check_int(steps, "steps")
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs", minimum=0)
        self._applied: WeightShift | None = None

    @property
    def threat(self) -> Threat:
        return self.base.threat

    @abstractmethod
    def perturbation_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor | None:
        """The loss the perturbation ascends (with the base's adversarial points fixed)."""

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        self.restore(model)  # a previous call whose loss was not stepped leaves nothing behind
        x_adv = self.base.adversarial(model, batch, ctx)
        norm = 0.0
        with fixed_adversarial(self.base, x_adv):
            if self.gamma > 0 and ctx.epoch >= self.warmup_epochs:
                params = perturbable(model)
                v = adversarial_weight_perturbation(
                    params, lambda: self.perturbation_loss(model, batch, ctx), self.gamma,
                    self.wp_steps,
                )  # fmt: skip
                self._applied = WeightShift(params, v)
                norm = float(sum(float(t.norm() ** 2) for t in v) ** 0.5)
            try:
                out = self.base.compute_loss(model, batch, ctx)
            except BaseException:
                self.restore(model)  # never leave the weights perturbed
                raise
        out.metrics["weight_perturbation"] = norm
        return out

    def restore(self, model: nn.Module) -> None:
        """Remove the perturbation the last :meth:`compute_loss` applied (idempotent)."""
        if self._applied is not None:
            self._applied.restore()
            self._applied = None

    def before_optimizer_step(self, model: nn.Module) -> None:
        self.restore(model)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base.config(),
            "gamma": self.gamma,
            "steps": self.wp_steps,
            "warmup_epochs": self.warmup_epochs,
        }


@METHODS.register("awp")
class AWP(WeightPerturbed):
    """Adversarial weight perturbation (AWP; Wu, Xia & Wang, NeurIPS 2020) on PGD-AT or TRADES:
    the base loss at layer-wise worst-case weights ``w + v``,

        min_w max_{||v_l|| <= gamma ||w_l||} L_base(w + v),

    ``v`` from one normalised ascent step on the base method's own loss at its adversarial points
    (``base="pgd-at"``: CE at x'; ``base="trades"``: CE(x) + beta KL). Extra keyword arguments
    (``steps``, ``beta``, ...) go to the base method; ``awp_steps`` ascent steps (1 in the paper).
    """

    name = "awp"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        base: str = "pgd-at",
        gamma: float = 5e-3,
        awp_steps: int = 1,
        warmup_epochs: int = 0,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(threat, base, gamma, awp_steps, warmup_epochs, base_kwargs)

    def perturbation_loss(self, model, batch, ctx):
        return self.base.compute_loss(model, batch, ctx).loss


@METHODS.register("rwp")
class RWP(WeightPerturbed):
    """Robust weight perturbation (Yu et al., ICML 2022, "Understanding robust overfitting of
    adversarial training and beyond") on PGD-AT: the weight perturbation ascends only the
    adversarial examples that satisfy the loss-stationary condition ``l(x', y; w + v) < c_min``,

        v = argmax_{||v_l|| <= gamma ||w_l||} sum_i 1[l_i(w + v) < c_min] l_i(w + v),

    by ``rwp_steps`` normalised ascent steps of size ``gamma ||w_l||``, each projected back onto
    the layer-wise ball; the model then minimises the PGD-AT loss at ``w + v``.
    """

    name = "rwp"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        gamma: float = 1e-2,
        c_min: float = 1.7,
        rwp_steps: int = 10,
        warmup_epochs: int = 0,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(threat, "pgd-at", gamma, rwp_steps, warmup_epochs, base_kwargs)
        self.c_min = check_positive(c_min, "c_min")

    def perturbation_loss(self, model, batch, ctx):
        x_adv = self.base.adversarial(model, batch, ctx)
        losses = F.cross_entropy(model(x_adv), batch.y, reduction="none")
        keep = losses.detach() < self.c_min
        if not keep.any():
            return None
        return (losses * keep).sum() / batch.y.shape[0]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "c_min": self.c_min}
