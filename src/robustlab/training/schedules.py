"""Schedules: learning rate per step, and the eps ramp used by adversarial and certified training.

The eps ramp (Gowal et al. 2018) grows the training radius linearly from 0 to its full value so
that early training is not dominated by an attack the model cannot yet resist. Every piece of
ramp arithmetic lives here: the trainer's ramp value :func:`ramp` (and any named ramp,
:func:`ramp_values`), the radius at that value (:func:`ramped_eps`, :func:`ramped_threat`) and
coefficients that follow it (:func:`ramp_between`, e.g. IBP's ``kappa``).
"""

from __future__ import annotations

import math

from robustlab.errors import RobustlabError
from robustlab.threat import Threat

LR_SCHEDULES = ("constant", "cosine", "step", "linear")


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``."""
    if schedule not in LR_SCHEDULES:
        raise RobustlabError(
            f"Unknown learning-rate schedule '{schedule}'; known: {', '.join(LR_SCHEDULES)}."
        )
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    t = min(max(t, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - t
    return 0.1 ** (int(t >= 0.5) + int(t >= 0.75))  # step: x0.1 at 50 % and 75 %


def ramp(epoch_float: float, start: float, length: float) -> float:
    """Linear ramp in [0, 1]: 0 before ``start`` epochs, 1 after ``start + length`` epochs."""
    if length <= 0:
        return 1.0 if epoch_float >= start else 0.0
    return min(1.0, max(0.0, (epoch_float - start) / length))


def ramped_eps(eps: float, scale: float, factor: float = 1.0) -> float:
    """The training radius ``eps * factor * scale`` at ramp value ``scale`` (``factor``: a
    training radius larger than the target one, e.g. IBP's 1.1, Gowal et al. 2018)."""
    return eps * factor * scale


def ramped_threat(threat: Threat, scale: float) -> Threat | None:
    """``threat`` at the ramped radius :func:`ramped_eps`, or None at radius 0 (clean inputs)."""
    eps = ramped_eps(threat.eps, scale)
    return threat.with_eps(eps) if eps > 0 else None


def ramp_between(start: float, end: float, scale: float) -> float:
    """A coefficient that goes linearly from ``start`` to ``end`` as the ramp goes from 0 to 1."""
    return start + (end - start) * scale


def cosine_anneal(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0 to ``end`` at progress 1 along a half cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def parse_ramp(name: str, spec: object) -> tuple[float, float]:
    """A ramp ``(start_epoch, length_epochs)`` from ``"2:5"`` or a pair of non-negative numbers."""
    if isinstance(spec, str):
        parts = spec.split(":")
    elif isinstance(spec, (list, tuple)):
        parts = list(spec)
    else:
        parts = []
    try:
        start, length = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except (TypeError, ValueError):
        start, length = math.nan, math.nan
    if not (start >= 0 and length >= 0) or any(isinstance(p, bool) for p in parts):
        raise RobustlabError(
            f"ramp '{name}' must be 'start:length' in epochs (two numbers >= 0), got {spec!r}."
        )
    return start, length


def ramp_values(ramps: dict[str, tuple[float, float]], epoch_float: float) -> dict[str, float]:
    """Every named ramp's value in [0, 1] at ``epoch_float`` epochs of training."""
    return {name: ramp(epoch_float, start, length) for name, (start, length) in ramps.items()}
