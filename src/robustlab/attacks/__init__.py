"""Adversarial attacks by name: ``ATTACKS.get("pgd")(threat="linf:0.3", steps=40)``.

The registries live in :mod:`robustlab.attacks.registry`; each attack module registers its classes
there, and importing the modules below (an explicit list, no scanning) registers them all.
"""

from robustlab.attacks.apgd import APGD, APGDCE, APGDDLR, APGDT
from robustlab.attacks.autoattack import AutoAttack
from robustlab.attacks.base import Attack, AttackResult
from robustlab.attacks.beta import BETA
from robustlab.attacks.cw import CarliniWagnerL2
from robustlab.attacks.deepfool import DeepFool
from robustlab.attacks.eot import EOT
from robustlab.attacks.fab import FAB, FABT
from robustlab.attacks.fmn import FMN
from robustlab.attacks.md import MD
from robustlab.attacks.pgd import FGSM, PGD
from robustlab.attacks.registry import ATTACKS, OBJECTIVES
from robustlab.attacks.square import Square
from robustlab.attacks.transfer import Transfer, transfer_attack


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
