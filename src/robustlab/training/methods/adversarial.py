"""Adversarial training: PGD-AT (Madry et al. 2018) and fast FGSM-RS training (Wong et al. 2020).

Both minimise the loss at an adversarial point found by an inner attack,

    min_theta E_(x,y) [ max_{delta in B(eps)} L(f_theta(x + delta), y) ],

approximating the inner maximum with PGD (K steps, random start) or with one FGSM step from a
uniform random start with step 1.25 * eps. The training radius follows the trainer's eps ramp
(``ctx.eps_scale``).
"""

from __future__ import annotations

from abc import abstractmethod

from torch import nn

from robustlab.attacks import PGD, Attack
from robustlab.losses._common import loss_name
from robustlab.threat import Threat
from robustlab.training.method import Batch, LossOutput, Method, StepContext
from robustlab.training.methods.registry import METHODS
from robustlab.training.methods.standard import resolve_loss
from robustlab.training.schedules import ramped_threat
from robustlab.validation import check_int, check_positive


class AdversarialMethod(Method):
    """Shared machinery: the threat, the eps ramp and the inner attack."""

    def __init__(self, threat: Threat | str = "linf:0.3", loss: str | nn.Module = "ce") -> None:
        super().__init__()
        self.threat = Threat.parse(threat)
        self.loss_name = loss_name(loss)
        self.loss_fn = resolve_loss(loss)

    @abstractmethod
    def make_attack(self, threat: Threat) -> Attack:
        """The inner attack at radius ``threat``."""

    def adversarial(self, model: nn.Module, batch: Batch, ctx: StepContext):
        """The inner maximisation at the current (ramped) radius; clean inputs at radius 0."""
        threat = ramped_threat(self.threat, ctx.eps_scale)
        if threat is None:
            return batch.x
        return self.make_attack(threat).maximize(model, batch.x, batch.y)

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        x_adv = self.adversarial(model, batch, ctx)
        logits = model(x_adv)
        return LossOutput(self.loss_fn(logits, batch.y), logits)


@METHODS.register("pgd-at")
class PGDAT(AdversarialMethod):
    """PGD adversarial training (Madry et al., ICLR 2018): CE at a K-step PGD point."""

    name = "pgd-at"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        steps: int = 10,
        step_size: float | None = None,
        loss: str | nn.Module = "ce",
    ) -> None:
        super().__init__(threat, loss)
        self.steps = check_int(steps, "steps")
        # None: PGD's default 2.5 * eps / steps
        self.step_size = None if step_size is None else check_positive(step_size, "step_size")

    def make_attack(self, threat: Threat) -> Attack:
        return PGD(threat, steps=self.steps, step_size=self.step_size, early_stop=False)


class PGDBased(PGDAT):
    """PGD-AT's inner attack (``threat``, ``steps``, ``step_size``) under a method with a loss of
    its own: no ``loss`` argument. Subclasses add their parameters and pass the rest on
    (:func:`~robustlab.training.method.forwards_base`)."""

    def __init__(
        self, threat: Threat | str = "linf:0.3", steps: int = 10, step_size: float | None = None
    ) -> None:
        super().__init__(threat, steps=steps, step_size=step_size)


@METHODS.register("fgsm-rs")
class FGSMRS(AdversarialMethod):
    """Fast adversarial training (Wong et al., ICLR 2020): one FGSM step of 1.25 eps from a
    uniform random start, projected back onto the eps ball."""

    name = "fgsm-rs"

    def __init__(
        self, threat: Threat | str = "linf:0.3", alpha: float = 1.25, loss: str | nn.Module = "ce"
    ) -> None:
        super().__init__(threat, loss)
        self.alpha = check_positive(alpha, "alpha")

    def make_attack(self, threat: Threat) -> Attack:
        return PGD(threat, steps=1, step_size=self.alpha * threat.eps, early_stop=False)
