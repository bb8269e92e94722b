"""The certifier registry, :data:`CERTIFIERS`: certification methods by name (ibp, crown-ibp,
crown, smoothing, lipschitz; :func:`robustlab.certify.certify` looks them up)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustlab.registry import Registry

if TYPE_CHECKING:
    from robustlab.certify.certifier import Certifier

CERTIFIERS: Registry[type[Certifier]] = Registry("certification method")
