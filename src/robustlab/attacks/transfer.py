"""Transfer attacks (Papernot et al. 2016, "Transferability in machine learning"): adversarial
examples crafted with a white-box attack on a surrogate model, then judged on the target model.

A transfer attack never looks at the target model's gradients, so it is a check against gradient
masking: a defence that resists white-box attacks but falls to transferred examples masks its
gradients (Carlini et al. 2019, "On evaluating adversarial robustness", Sec. 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from robustlab.attacks import ATTACKS
from robustlab.attacks.base import Attack, AttackResult
from robustlab.runtime.modes import eval_mode
from robustlab.threat import Threat


@ATTACKS.register("transfer")
class Transfer(Attack):
    """Transfer attack: a white-box attack on a surrogate model, evaluated on the target model."""

    name = "transfer"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        *,
        surrogate: nn.Module | str | Path,
        attack: str | Attack = "apgd-ce",
        attack_args: dict[str, Any] | None = None,
        targeted: bool = False,
        seed: int | None = 0,
    ) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if isinstance(surrogate, (str, Path)):
            from robustlab.models import load_model

            surrogate = load_model(surrogate)[0]
        self.surrogate = surrogate
        if isinstance(attack, str):
            kwargs = dict(attack_args or {})
            if targeted:
                kwargs["targeted"] = True
            attack = ATTACKS.build(attack, threat=self.threat, seed=seed, **kwargs)
        self.attack = attack

    def perturb(self, model, x, y, target, generator):
        device = x.device
        self.surrogate.to(device)
        with eval_mode(self.surrogate):
            return self.attack.maximize(self.surrogate, x, y, target)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threat": str(self.threat),
            "surrogate": type(self.surrogate).__name__,
            "attack": self.attack.config(),
        }


def transfer_attack(
    surrogate: nn.Module, model: nn.Module, x: Tensor, y: Tensor, attack: str | Attack, **kw: Any
) -> AttackResult:
    """Craft adversarial examples with ``attack`` on ``surrogate``; success is judged on ``model``."""
    threat = kw.pop("threat", None) or (attack.threat if isinstance(attack, Attack) else None)
    return Transfer(threat, surrogate=surrogate, attack=attack, **kw).run(model, x, y)
