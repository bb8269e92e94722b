"""The corruption registry, :data:`CORRUPTIONS`: corruptions by name (each family module registers
its corruptions through :func:`robustlab.corruptions.base.register`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustlab.registry import Registry

if TYPE_CHECKING:
    from robustlab.corruptions.base import Corruption

CORRUPTIONS: Registry[Corruption] = Registry("corruption")
