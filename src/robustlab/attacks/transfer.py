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

from robustlab.attacks.base import Attack, AttackResult
from robustlab.attacks.params import fixed, param
from robustlab.attacks.registry import ATTACKS
from robustlab.runtime.modes import eval_mode


@ATTACKS.register("transfer")
class Transfer(Attack):
    """Transfer attack: a white-box attack on a surrogate model, evaluated on the target model."""

    name = "transfer"

    threat = param("linf:0.3")
    #: the surrogate model, or the path of its checkpoint
    surrogate: nn.Module | str | Path = param()
    #: the white-box attack run on the surrogate: a registered name or an Attack
    attack: str | Attack = param("apgd-ce")
    attack_args: dict[str, Any] | None = param(None)
    loss = fixed("ce")
    restarts = fixed(1)
    seed: int | None = param(0)

    def _check_params(self) -> None:
        if isinstance(self.surrogate, (str, Path)):
            from robustlab.models import load_model

            self.surrogate = load_model(self.surrogate)[0]
        if isinstance(self.attack, str):
            kwargs = dict(self.attack_args or {})
            if self.targeted:
                kwargs["targeted"] = True
            self.attack = ATTACKS.build(self.attack, threat=self.threat, seed=self.seed, **kwargs)

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
