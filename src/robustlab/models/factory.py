"""The model registry and :func:`build_model`, the one way to construct a named model.

A registered model is a factory ``f(input_shape, num_classes, **kwargs) -> nn.Sequential`` of
standard layers (see :mod:`robustlab.models.layers`). :func:`build_model` validates the
arguments, calls the factory, prepends a :class:`Normalize` layer when asked, and records how the
model was built on the model itself::

    model.robustlab_spec == {"name": "cnn-small",
                             "args": {"input_shape": [1, 28, 28], "num_classes": 10,
                                      "normalize": None, "kwargs": {}}}

``kwargs`` holds every factory argument, defaults included, so a checkpoint made from the model
(:func:`robustlab.models.make_checkpoint`) rebuilds the same architecture even if a default
changes later. The spec is plain data (lists, numbers, strings), as
``torch.load(weights_only=True)`` requires.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.models.registry import MODELS
from robustlab.registry import _normalize as normalize_name
from robustlab.validation import check_int

SPEC_ATTR = "robustlab_spec"
_FIXED = ("input_shape", "num_classes")


def _plain(value: Any) -> Any:
    """Tuples -> lists, tensors -> lists, recursively: data that weights_only loading accepts."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise RobustlabError(
            f"input_shape must be (C, H, W) or (D,), got {input_shape!r}."
        ) from None
    if len(shape) not in (1, 3) or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape
    ):
        raise RobustlabError(
            f"input_shape must be (C, H, W) or (D,) with positive integers, got {input_shape!r}."
        )
    return shape


def _check_normalize(normalize: Any, channels: int) -> list[list[float]] | None:
    """``(mean, std)`` with scalars or one value per channel -> ``[mean_list, std_list]``."""
    if normalize is None:
        return None
    if not isinstance(normalize, (list, tuple)) or len(normalize) != 2:
        raise RobustlabError(f"normalize must be a pair (mean, std) or None, got {normalize!r}.")
    out = []
    for what, value in zip(("mean", "std"), normalize, strict=True):
        vals = _plain(value)
        vals = vals if isinstance(vals, list) else [vals]
        if len(vals) not in (1, channels) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals
        ):
            raise RobustlabError(
                f"normalize {what} must be a number or {channels} numbers (one per input "
                f"channel), got {value!r}."
            )
        out.append([float(v) for v in vals])
    return out


def _bind_kwargs(key: str, factory: Callable[..., nn.Module], kwargs: dict) -> dict[str, Any]:
    """All of the factory's own arguments, given ones and defaults, by name."""
    params = {
        n: p for n, p in inspect.signature(factory).parameters.items() if n not in _FIXED
    }
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = ", ".join(params) or "none"
        raise RobustlabError(
            f"Unknown argument {unknown[0]!r} for model '{key}'; valid arguments: {valid}."
        )
    return {n: _plain(kwargs.get(n, p.default)) for n, p in params.items()}


def build_model(
    name: str,
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    normalize: tuple[Any, Any] | None = None,
    **kwargs: Any,
) -> nn.Sequential:
    """Build the registered model ``name`` for per-sample ``input_shape`` and ``num_classes``.

    ``input_shape`` is (C, H, W) for images or (D,) for feature vectors; ``normalize=(mean,
    std)`` (scalars or one value per channel) prepends a :class:`Normalize` layer so the model
    takes inputs in [0, 1]. Extra keyword arguments go to the model's factory (e.g. ``hidden``
    for ``mlp``, ``width`` for ``cnn7``). The result is an ``nn.Sequential`` carrying
    ``robustlab_spec`` (see the module docstring) for checkpointing.
    """
    from robustlab.models.layers import Normalize

    if not isinstance(name, str):
        raise RobustlabError(f"model name must be a string, got {name!r}; known: {MODELS.names()}.")
    key = normalize_name(name)
    factory = MODELS.get(key)
    shape = _check_shape(input_shape)
    check_int(num_classes, "num_classes", minimum=2)
    norm = _check_normalize(normalize, shape[0])
    bound = _bind_kwargs(key, factory, kwargs)
    try:
        model = factory(input_shape=shape, num_classes=num_classes, **bound)
    except RobustlabError as e:
        raise RobustlabError(f"Cannot build model '{key}': {e}") from None
    if norm is not None:
        model = nn.Sequential(Normalize(*norm), *model)
    spec = {
        "name": key,
        "args": {
            "input_shape": list(shape),
            "num_classes": num_classes,
            "normalize": norm,
            "kwargs": bound,
        },
    }
    setattr(model, SPEC_ATTR, spec)
    return model


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """The ``robustlab_spec`` that :func:`build_model` attached, looking through DDP/compile."""
    return getattr(unwrap(model), SPEC_ATTR, None)


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying module of a ``torch.compile`` / DataParallel / DDP wrapper."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model
