"""The loss registry, :data:`LOSSES`: classification losses by name (each loss module registers its
losses; importing :mod:`robustlab.losses` imports them all)."""

from robustlab.registry import Registry

LOSSES: Registry = Registry("loss")
