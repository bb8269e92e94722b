"""The suite registry, :data:`SUITES`: evaluation suites by name (registered in
:mod:`robustlab.evaluation.suites`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustlab.registry import Registry

if TYPE_CHECKING:
    from robustlab.evaluation.suites import Suite

SUITES: Registry[Suite] = Registry("suite")
