"""Expectation over Transformation for randomized models (Athalye et al., ICML 2018,
"Obfuscated gradients give a false sense of security", Sec. 5.3).

``EOT(attack, samples=n)`` runs ``attack`` with the gradient of each step averaged over ``n``
forward passes of the (randomized) model, ``grad E_r[L(f_r(x))] ≈ (1/n) sum_i grad L(f_{r_i}(x))``.
It works with every attack whose gradients go through :meth:`Attack.loss_gradient`
(``supports_eot = True``: APGD, APGD-T, MD, BETA, ...); the wrapped attack keeps its own budget
and restarts, and each step costs ``n`` forward/backward passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from robustlab.attacks.base import Attack, AttackResult
from robustlab.attacks.registry import ATTACKS
from robustlab.errors import RobustlabError
from robustlab.threat import Threat
from robustlab.validation import check_int


def _eot_attacks() -> str:
    names = [n for n in ATTACKS.names() if getattr(ATTACKS.get(n), "supports_eot", False)]
    return ", ".join(names)


@ATTACKS.register("eot")
class EOT(Attack):
    """EOT wrapper (Athalye et al. 2018): the wrapped attack's gradients averaged over n draws."""

    name = "eot"

    def __init__(
        self,
        threat: Threat | str | None = None,
        *,
        attack: str | Attack = "apgd-ce",
        samples: int = 20,
        attack_args: dict[str, Any] | None = None,
        seed: int | None = 0,
    ) -> None:
        if isinstance(attack, str):
            if threat is None:
                raise RobustlabError("EOT needs a threat such as 'linf:0.3' to build the attack.")
            attack = ATTACKS.build(attack, threat=threat, seed=seed, **(attack_args or {}))
        if not getattr(attack, "supports_eot", False):
            raise RobustlabError(
                f"attack '{attack.name}' does not compute its gradients through "
                f"Attack.loss_gradient, so EOT cannot average them; EOT supports: {_eot_attacks()}."
            )
        self.minimal_norm = attack.minimal_norm
        super().__init__(
            attack.threat,
            targeted=attack.targeted,
            seed=seed,
            norm=attack.norm if attack.threat is None else None,
        )
        self.attack = attack
        self.samples = check_int(samples, "samples")

    @contextmanager
    def _averaging(self) -> Iterator[Attack]:
        self.attack.eot_samples = self.samples
        try:
            yield self.attack
        finally:
            del self.attack.eot_samples  # back to the class default (1)

    def run(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None = None):
        with self._averaging() as attack:
            result: AttackResult = attack.run(model, x, y, target)
        result.extras["eot_samples"] = self.samples
        return result

    def maximize(self, model, x, y, target=None):
        with self._averaging() as attack:
            return attack.maximize(model, x, y, target)

    def perturb(self, model, x, y, target, generator):
        with self._averaging() as attack:
            return attack.perturb(model, x, y, target, generator)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, "attack": self.attack.config()}
