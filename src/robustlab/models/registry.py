"""The model registry, :data:`MODELS`: architecture factories ``f(input_shape, num_classes,
**kwargs) -> nn.Sequential`` by name (each model module registers its factories; importing
:mod:`robustlab.models` imports them all; :func:`robustlab.models.build_model` builds one)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from robustlab.registry import Registry

MODELS: Registry[Callable[..., nn.Sequential]] = Registry("model")
