"""Virtual adversarial training (Miyato, Maeda, Koyama & Ishii, TPAMI 2018), incl. the
semi-supervised mode: samples whose label is -1 are unlabelled."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.losses.adversarial import kl_divergence
from robustlab.runtime.modes import eval_mode
from robustlab.threat import Threat
from robustlab.training.method import Batch, LossOutput, Method, StepContext
from robustlab.training.methods.registry import METHODS
from robustlab.training.schedules import ramped_threat
from robustlab.validation import check_int, check_positive

UNLABELLED = -1


def l2_normalize(d: Tensor) -> Tensor:
    flat = d.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(d.shape)


def virtual_adversarial_direction(
    model: nn.Module, x: Tensor, ref_logits: Tensor, xi: float, power_iterations: int
) -> Tensor:
    """The unit L2 direction ``r`` maximising ``KL(p(x) || p(x + r))`` to second order, by power
    iteration from a random ``d``: ``d <- normalize(grad_d KL(p(x) || p(x + xi d)))``."""
    d = l2_normalize(torch.randn_like(x))
    with eval_mode(model):
        for _ in range(power_iterations):
            d = d.detach().requires_grad_(True)
            kl = kl_divergence(ref_logits.detach(), model(x + xi * d)).sum()
            (grad,) = torch.autograd.grad(kl, d)
            d = l2_normalize(grad)
    return d.detach()


@METHODS.register("vat")
class VAT(Method):
    """Virtual adversarial training (VAT; Miyato et al., TPAMI 2018): CE on the labelled samples
    plus the KL to the prediction at the virtual adversarial point (labels -1: unlabelled),

        L = mean_{labelled} CE(f(x), y) + alpha * mean_{all} KL(p(x) || p(x + r_vadv)),

    ``r_vadv = eps * r`` with ``r`` the power-iteration direction (``power_iterations`` = 1 in the
    paper) and ``p(x)`` held fixed. ``xi`` is the finite-difference radius; the paper's 1e-6 moves
    the logits of [0, 1] inputs by less than float32 resolution (the gradient vanishes), so the
    default is 1e-3. The perturbed input is
    projected into [0, 1] (the threat's box). Samples labelled -1 are unlabelled: they enter only
    the regulariser (the semi-supervised mode). The threat must be L2 (``l2:eps``).
    """

    name = "vat"

    def __init__(
        self,
        threat: Threat | str = "l2:2.0",
        alpha: float = 1.0,
        xi: float = 1e-3,
        power_iterations: int = 1,
    ) -> None:
        super().__init__()
        self.threat = Threat.parse(threat)
        if self.threat.norm != "l2":
            raise RobustlabError(f"vat needs an L2 threat such as 'l2:2.0', got '{self.threat}'.")
        self.alpha = check_positive(alpha, "alpha", allow_zero=True)
        self.xi = check_positive(xi, "xi")
        self.power_iterations = check_int(power_iterations, "power_iterations")

    def adversarial(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        """``x + r_vadv`` projected onto the [0, 1] box (clean inputs at radius 0)."""
        threat = ramped_threat(self.threat, ctx.eps_scale)
        if threat is None:
            return batch.x
        with torch.no_grad(), eval_mode(model):
            ref = model(batch.x)
        r = virtual_adversarial_direction(model, batch.x, ref, self.xi, self.power_iterations)
        return threat.project(batch.x + threat.eps * r, batch.x)

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        x_adv = self.adversarial(model, batch, ctx)
        logits = model(batch.x)
        labelled = batch.y != UNLABELLED
        if labelled.any():
            ce = F.cross_entropy(logits[labelled], batch.y[labelled])
        else:
            ce = logits.sum() * 0.0
        lds = kl_divergence(logits.detach(), model(x_adv)).mean()
        metrics = {"ce": float(ce.detach()), "lds": float(lds.detach())}
        metrics["labelled"] = float(labelled.float().mean())
        return LossOutput(ce + self.alpha * lds, logits, metrics)
