"""The attack registries: :data:`ATTACKS`, attack classes by name (each attack module registers its
classes), and :data:`OBJECTIVES`, the per-sample objectives attacks maximise by name
(:mod:`robustlab.attacks.objectives`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustlab.registry import Registry

if TYPE_CHECKING:
    from robustlab.attacks.base import Attack
    from robustlab.attacks.objectives import Objective

ATTACKS: Registry[type[Attack]] = Registry("attack")
OBJECTIVES: Registry[Objective] = Registry("attack loss")
