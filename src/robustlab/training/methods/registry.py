"""The training-method registry, :data:`METHODS`: method classes by name (each method module
registers its classes; importing :mod:`robustlab.training.methods` imports them all)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustlab.registry import Registry

if TYPE_CHECKING:
    from robustlab.training.method import Method

METHODS: Registry[type[Method]] = Registry("method")
