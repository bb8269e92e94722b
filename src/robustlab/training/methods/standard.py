"""Empirical risk minimisation with any loss from :data:`robustlab.losses.LOSSES`."""

from __future__ import annotations

from typing import Any

from torch import nn

from robustlab.losses import LOSSES
from robustlab.losses._common import build_loss, loss_name
from robustlab.training.method import Batch, LossOutput, Method, StepContext
from robustlab.training.methods.registry import METHODS


def resolve_loss(loss: str | nn.Module, **kwargs: Any) -> nn.Module:
    """A loss module from a registered name (with keyword arguments) or a module as is; anything
    else, or keyword arguments with a module, is refused with one sentence."""
    return LOSSES.build(loss, **kwargs) if isinstance(loss, str) else build_loss(loss, **kwargs)


@METHODS.register("standard")
class Standard(Method):
    """Standard training: minimise ``loss(f(x), y)`` on clean inputs (CE by default)."""

    name = "standard"

    def __init__(self, loss: str | nn.Module = "ce", **loss_kwargs: Any) -> None:
        super().__init__()
        self.loss_name = loss_name(loss)
        self.loss_kwargs = loss_kwargs
        self.loss_fn = resolve_loss(loss, **loss_kwargs)

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        logits = model(batch.x)
        return LossOutput(self.loss_fn(logits, batch.y), logits)

    def config(self) -> dict:
        return {"name": self.name, "loss": self.loss_name, **self.loss_kwargs}
