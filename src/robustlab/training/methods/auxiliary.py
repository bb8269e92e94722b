"""Adversarial training with an auxiliary head on the penultimate features: DIAL (a domain
classifier behind gradient reversal) and the rotation-prediction task.

The head is created in :meth:`setup` (or :meth:`attach`) with the width of the model's features
(the input of its last Linear layer); it is a parameter of the method, so the trainer optimises
and checkpoints it.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.losses.adversarial import kl_divergence
from robustlab.threat import Threat
from robustlab.training.method import Batch, LossOutput, StepContext, forwards_base
from robustlab.training.methods.adversarial import PGDBased
from robustlab.training.methods.registry import METHODS
from robustlab.training.methods.shared import feature_dim, features_and_logits, grad_reverse
from robustlab.validation import check_int, check_positive


@forwards_base
class AuxiliaryHead(PGDBased):
    """Shared machinery: ``self.head`` built on the model's feature width."""

    def __init__(self, threat: Threat | str = "linf:0.3", **base: Any) -> None:
        super().__init__(threat, **base)
        self.head: nn.Module | None = None

    @abstractmethod
    def build_head(self, width: int) -> nn.Module:
        """Implemented by each subclass."""

    def attach(self, model: nn.Module) -> None:
        device = next(model.parameters()).device
        self.head = self.build_head(feature_dim(model)).to(device)

    def setup(self, trainer) -> None:
        self.attach(trainer.model)

    def check_head(self) -> nn.Module:
        if self.head is None:
            raise RobustlabError(
                f"{self.name} needs its head: call setup(trainer) or attach(model)."
            )
        return self.head


@METHODS.register("dial")
@forwards_base
class DIAL(AuxiliaryHead):
    """Domain-invariant adversarial learning (DIAL; Levi, Attias & Kontorovich 2021):
    a domain classifier ``D`` on the features ``h`` tells natural (domain 0) from adversarial
    (domain 1) inputs through a gradient-reversal layer, so the features become domain invariant:

        L = CE(f(x), y) + lam * R(x, x') + r * [CE(D(GRL(h(x))), 0) + CE(D(GRL(h(x'))), 1)],

    with ``R = CE(f(x'), y)`` (``variant="ce"``, DIAL_CE) or ``KL(p(x) || p(x'))`` (``"kl"``,
    DIAL_KL) and ``x'`` from PGD-CE. ``D`` is a two-layer MLP of width ``hidden``.
    """

    name = "dial"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        lam: float = 1.0,
        r: float = 0.1,
        variant: str = "ce",
        hidden: int = 64,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        if variant not in ("ce", "kl"):
            raise RobustlabError(f"variant must be 'ce' or 'kl', got {variant!r}.")
        self.lam = check_positive(lam, "lam", allow_zero=True)
        self.r = check_positive(r, "r", allow_zero=True)
        self.variant = variant
        self.hidden = check_int(hidden, "hidden")

    def build_head(self, width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(width, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 2))

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        head = self.check_head()
        x_adv = self.adversarial(model, batch, ctx)
        h, z = features_and_logits(model, batch.x)
        h_adv, z_adv = features_and_logits(model, x_adv)
        natural = F.cross_entropy(z, batch.y)
        if self.variant == "ce":
            robust = F.cross_entropy(z_adv, batch.y)
        else:
            robust = kl_divergence(z, z_adv).mean()
        n = batch.x.shape[0]
        domains = torch.cat([torch.zeros(n), torch.ones(n)]).long().to(z.device)
        domain_logits = head(grad_reverse(torch.cat([h, h_adv])))
        domain = (
            F.cross_entropy(domain_logits, domains, reduction="none").reshape(2, n).mean(1).sum()
        )
        metrics = {
            "natural": float(natural.detach()),
            "robust": float(robust.detach()),
            "domain": float(domain.detach()),
        }
        return LossOutput(natural + self.lam * robust + self.r * domain, z, metrics)


def rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """The batch rotated by 0, 90, 180 and 270 degrees (4N images) and the rotation labels."""
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise RobustlabError(
            f"rotation prediction needs square images (N, C, H, H), got shape {tuple(x.shape)}."
        )
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


@METHODS.register("rotation")
@forwards_base
class Rotation(AuxiliaryHead):
    """Self-supervised rotation prediction as an auxiliary task (Hendrycks, Mazeika, Kadavath &
    Song, NeurIPS 2019): a 4-way head on the features predicts the rotation of the
    (adversarial) input,

        L = CE(f(x'), y) + lam * mean_{r in 0,90,180,270} CE(g(h(rot_r(x'))), r).

    Rotating a perturbed image by a multiple of 90 degrees permutes pixels, so ``rot_r(x')`` stays
    in the threat ball around ``rot_r(x)``. With ``adversarial=False`` (or eps 0) it is standard
    training with the auxiliary task."""

    name = "rotation"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        lam: float = 0.5,
        adversarial_training: bool = True,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        self.lam = check_positive(lam, "lam", allow_zero=True)
        self.adversarial_training = bool(adversarial_training)

    def build_head(self, width: int) -> nn.Module:
        return nn.Linear(width, 4)

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        head = self.check_head()
        x = self.adversarial(model, batch, ctx) if self.adversarial_training else batch.x
        n = x.shape[0]
        rotated, labels = rotations(x)
        h, z = features_and_logits(model, rotated)  # the first N rows are the unrotated batch
        ce = F.cross_entropy(z[:n], batch.y)
        rot = F.cross_entropy(head(h), labels)
        metrics = {"ce": float(ce.detach()), "rotation": float(rot.detach())}
        return LossOutput(ce + self.lam * rot, z[:n], metrics)
