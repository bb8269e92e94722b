"""FOMO: random forgetting against robust overfitting (Ramkumar, Zonooz & Arani, ICLR 2024)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.losses.adversarial import kl_divergence
from robustlab.models.factory import unwrap
from robustlab.threat import Threat
from robustlab.training.method import Batch, LossOutput, StepContext, forwards_base
from robustlab.training.methods.distillation import EMATeacher
from robustlab.training.methods.registry import METHODS
from robustlab.training.methods.shared import fresh_copy, teacher_logits
from robustlab.validation import check_int, check_positive


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The model's Linear and Conv layers, input to output."""
    return [m for m in unwrap(model).modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


@torch.no_grad()
def forget(model: nn.Module, layers: int, fraction: float) -> int:
    """Re-initialise a random ``fraction`` of the weights of the last ``layers`` weight layers
    (each entry is kept or redrawn from the layer's own initialiser); returns how many."""
    targets = weight_layers(model)[-layers:]
    count = 0
    for layer in targets:
        fresh = fresh_copy(layer)
        for name, p in layer.named_parameters(recurse=False):
            mask = torch.rand(p.shape, device=p.device) < fraction
            p.copy_(torch.where(mask, getattr(fresh, name).to(p.device), p))
            count += int(mask.sum())
    return count


@METHODS.register("fomo")
@forwards_base
class FOMO(EMATeacher):
    """Forget to mitigate overfitting (FOMO; Ramkumar et al., ICLR 2024): PGD-AT with periodic
    random re-initialisation of later-layer weights and a consistency term to an EMA model.

    - *forgetting*: at the start of every ``forget_every``-th epoch (after the first), a random
      ``fraction`` of the weights of the last ``layers`` layers is re-initialised;
    - *relearning*: PGD-AT in between, with a consistency term towards the stable model,
      ``L = CE(f(x'), y) + lam KL(p_stable(x') || p(x'))``;
    - *consolidation*: the stable model is an EMA of the weights (``decay``), updated every step.
    """

    name = "fomo"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        forget_every: int = 5,
        fraction: float = 0.2,
        layers: int = 1,
        lam: float = 1.0,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        self.forget_every = check_int(forget_every, "forget_every")
        if not 0 <= fraction <= 1:
            raise RobustlabError(f"fraction must be in [0, 1], got {fraction!r}.")
        self.fraction = float(fraction)
        self.layers = check_int(layers, "layers")
        self.lam = check_positive(lam, "lam", allow_zero=True)
        self._forgotten = 0

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if epoch > 0 and epoch % self.forget_every == 0:
            self._forgotten = forget(trainer.model, self.layers, self.fraction)

    def on_epoch_end(self, trainer, epoch: int) -> dict[str, float]:
        out = {"forgotten": float(self._forgotten)}
        self._forgotten = 0
        return out

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        if self.teacher is None:
            raise RobustlabError(
                "fomo needs its stable model: call setup(trainer) or attach(model)."
            )
        x_adv = self.adversarial(model, batch, ctx)
        logits = model(x_adv)
        ce = F.cross_entropy(logits, batch.y)
        consistency = kl_divergence(teacher_logits(self.teacher, x_adv), logits).mean()
        metrics = {"consistency": float(consistency.detach())}
        return LossOutput(ce + self.lam * consistency, logits, metrics)
