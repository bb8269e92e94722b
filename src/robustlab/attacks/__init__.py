"""Adversarial attacks by name: ``ATTACKS.get("pgd")(threat="linf:0.3", steps=40)``."""

from robustlab.registry import Registry

ATTACKS: Registry = Registry("attack")

# Attack modules register on import; keep this list explicit.
from robustlab.attacks.apgd import APGD, APGDCE, APGDDLR, APGDT  # noqa: E402
from robustlab.attacks.autoattack import AutoAttack  # noqa: E402
from robustlab.attacks.base import Attack, AttackResult  # noqa: E402
from robustlab.attacks.beta import BETA  # noqa: E402
from robustlab.attacks.cw import CarliniWagnerL2  # noqa: E402
from robustlab.attacks.deepfool import DeepFool  # noqa: E402
from robustlab.attacks.eot import EOT  # noqa: E402
from robustlab.attacks.fab import FAB, FABT  # noqa: E402
from robustlab.attacks.fmn import FMN  # noqa: E402
from robustlab.attacks.md import MD  # noqa: E402
from robustlab.attacks.objectives import OBJECTIVES  # noqa: E402
from robustlab.attacks.pgd import FGSM, PGD  # noqa: E402
from robustlab.attacks.square import Square  # noqa: E402
from robustlab.attacks.transfer import Transfer, transfer_attack  # noqa: E402


def build_attack(name: str, threat, **kwargs) -> Attack:
    """Instantiate the attack registered as ``name`` for ``threat``."""
    return ATTACKS.build(name, threat=threat, **kwargs)


__all__ = [
    "APGD",
    "APGDCE",
    "APGDDLR",
    "APGDT",
    "ATTACKS",
    "AutoAttack",
    "BETA",
    "EOT",
    "MD",
    "Square",
    "Transfer",
    "transfer_attack",
    "OBJECTIVES",
    "Attack",
    "AttackResult",
    "CarliniWagnerL2",
    "DeepFool",
    "FAB",
    "FABT",
    "FMN",
    "FGSM",
    "PGD",
    "build_attack",
]
