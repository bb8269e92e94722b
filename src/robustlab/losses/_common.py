"""Pieces every loss shares: input checks, the reduction, one-hot targets, stable probabilities.

Losses are written on log-probabilities ``log p = log_softmax(z)`` so that they stay finite for
extreme logits: ``p_y ** q`` is ``exp(q * log p_y)`` and ``1 - p_y`` is ``-expm1(log p_y)``; a
power of ``1 - p`` with an exponent below one (whose derivative is infinite at ``p = 1``) uses the
complement clamped away from zero, :func:`complement`.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.validation import check_labels, check_positive

REDUCTIONS = ("mean", "sum", "none")

# Smallest value of 1 - p used under a fractional power: keeps (1 - p) ** gamma differentiable.
COMPLEMENT_FLOOR = 1e-12


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise RobustlabError(
            f"Unknown reduction {reduction!r}; valid reductions: {', '.join(REDUCTIONS)}."
        )
    return reduction


def reduce(loss: Tensor, reduction: str) -> Tensor:
    """Mean or sum over the batch, or the per-sample losses as they are (``"none"``)."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_loss_inputs(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``(N, K)`` with K >= 2 (half precision upcast to float32) and labels in [0, K)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        what = (
            f"shape {tuple(logits.shape)} and dtype {logits.dtype}"
            if isinstance(logits, Tensor)
            else type(logits).__name__
        )
        raise RobustlabError(f"logits must be a float tensor of shape (N, K), got {what}.")
    n, k = logits.shape
    if k < 2:
        raise RobustlabError(f"logits need at least 2 classes, got shape {(n, k)}.")
    target = check_labels(target, n, k, "targets")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits, target


def one_hot(target: Tensor, num_classes: int, like: Tensor) -> Tensor:
    """One-hot rows ``(N, K)`` with the dtype and device of ``like``."""
    return F.one_hot(target, num_classes).to(dtype=like.dtype, device=like.device)


def pick(values: Tensor, target: Tensor) -> Tensor:
    """``values[i, target[i]]`` for every row ``i``."""
    return values.gather(1, target[:, None]).squeeze(1)


def one_minus_exp(log_p: Tensor) -> Tensor:
    """``1 - p`` from ``log p`` without cancellation (``-expm1(log p)``)."""
    return -torch.expm1(log_p)


def complement(log_p: Tensor) -> Tensor:
    """``1 - p`` clamped to at least ``COMPLEMENT_FLOOR``, for fractional powers of it."""
    return one_minus_exp(log_p).clamp_min(COMPLEMENT_FLOOR)


def focal_term(log_p: Tensor, gamma: float) -> Tensor:
    """The focal loss of each entry: ``-(1 - p) ** gamma * log p`` (Lin et al. 2017, Eq. 5)."""
    return -complement(log_p).pow(gamma) * log_p


def check_unit_interval(value: float, name: str, *, closed: bool = True) -> float:
    """A number in [0, 1] (or (0, 1) when ``closed`` is False)."""
    v = check_positive(value, name, allow_zero=closed)
    if v > 1 or (not closed and v == 1):
        bounds = "[0, 1]" if closed else "(0, 1)"
        raise RobustlabError(f"{name} must be in {bounds}, got {value!r}.")
    return v


class PerSampleLoss(nn.Module):
    """Base class: subclasses give the per-sample loss; the base checks inputs and reduces.

    ``forward(logits (N, K), target (N,))`` returns the mean over the batch, the sum, or the
    ``(N,)`` per-sample losses, as ``reduction`` says.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    @abstractmethod
    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        """The ``(N,)`` losses of checked logits and labels."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, target = check_loss_inputs(logits, target)
        return reduce(self.per_sample(logits, target), self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


def build_loss(loss: str | nn.Module, **kwargs) -> nn.Module:
    """A loss module from a registered name (built with ``kwargs``) or a module as it is."""
    from robustlab.losses.registry import LOSSES

    if isinstance(loss, nn.Module):
        if kwargs:
            raise RobustlabError(
                f"keyword arguments {sorted(kwargs)} apply to a loss given by name, not to the "
                f"module {type(loss).__name__}."
            )
        return loss
    if not isinstance(loss, str):
        raise RobustlabError(
            f"a loss must be a registered name or an nn.Module, got {type(loss).__name__}; "
            f"known losses: {', '.join(LOSSES.names())}."
        )
    try:
        return LOSSES.build(loss, **kwargs)
    except TypeError as e:
        raise RobustlabError(f"Cannot build loss {loss!r}: {e}.") from None


def loss_name(loss: str | nn.Module) -> str:
    """How a loss given by name or as a module is recorded in a config: the name, or the
    module's class name."""
    return loss if isinstance(loss, str) else type(loss).__name__


def per_sample_loss_fn(loss: str | nn.Module) -> nn.Module:
    """A loss returning ``(N,)`` values: a name is built with ``reduction="none"``; a module is
    used as it is (it must already return per-sample values)."""
    return build_loss(loss, reduction="none") if isinstance(loss, str) else build_loss(loss)
