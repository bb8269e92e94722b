"""Adversarial training on interpolated inputs: Interpolated AT (IAT) and AVmixup.

The random draws (mixing coefficients, partners) come from one method each, :meth:`draw`, which
tests replace to fix them; adversarial points come from :meth:`adversarial` (PGD on CE).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.losses.adversarial import smooth_labels, soft_cross_entropy
from robustlab.models.factory import unwrap
from robustlab.threat import Threat
from robustlab.training.method import Batch, LossOutput, StepContext, forwards_base
from robustlab.training.methods.adversarial import PGDBased
from robustlab.training.methods.registry import METHODS
from robustlab.validation import check_positive


def mixing_points(model: nn.Module) -> list[int]:
    """Where Manifold Mixup may mix an ``nn.Sequential`` model: before layer 0 (the input) and
    after every ReLU that is not the last layer."""
    seq = unwrap(model)
    if not isinstance(seq, nn.Sequential):
        raise RobustlabError(
            f"manifold mixup needs an nn.Sequential model, got {type(seq).__name__}; use "
            "manifold=false for input mixup."
        )
    return [0] + [i + 1 for i, m in enumerate(seq[:-1]) if isinstance(m, nn.ReLU)]


def mixup_loss(
    model: nn.Module, x: Tensor, y: Tensor, lam: float, perm: Tensor, layer: int = 0
) -> tuple[Tensor, Tensor]:
    """Mixup (Zhang et al. 2018) at the input (``layer=0``) or, Manifold Mixup (Verma et al.
    2019), at the hidden state before layer ``layer`` of an ``nn.Sequential`` model:
    ``h~ = lam h + (1 - lam) h[perm]`` and ``lam CE(f(h~), y) + (1 - lam) CE(f(h~), y[perm])``.
    Returns the batch mean and the logits."""
    if layer == 0:
        logits = model(lam * x + (1.0 - lam) * x[perm])
    else:
        seq = unwrap(model)
        h = seq[:layer](x)
        logits = seq[layer:](lam * h + (1.0 - lam) * h[perm])
    k = logits.shape[1]
    target = lam * smooth_labels(y, k, 1.0) + (1.0 - lam) * smooth_labels(y[perm], k, 1.0)
    return soft_cross_entropy(logits, target).mean(), logits


@METHODS.register("iat")
@forwards_base
class IAT(PGDBased):
    """Interpolated adversarial training (IAT; Lamb et al., AISec 2019): Mixup on the clean and
    on the PGD batch, half each,

        L = 1/2 Mixup(x, y) + 1/2 Mixup(x', y),

    with ``x'`` the PGD points of the clean batch and a fresh draw (``lam ~ Beta(alpha, alpha)``,
    a random partner permutation) for each half. With ``manifold=True`` the mixing happens at a
    uniformly drawn hidden state of an ``nn.Sequential`` model (input or after a ReLU; Manifold
    Mixup, the paper's other variant), drawn per half."""

    name = "iat"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        alpha: float = 1.0,
        manifold: bool = False,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        self.alpha = check_positive(alpha, "alpha")
        self.manifold = bool(manifold)

    def draw(self, model: nn.Module, n: int, device: torch.device) -> tuple[float, Tensor, int]:
        """One Mixup draw: ``lam ~ Beta(alpha, alpha)``, a partner permutation and the layer."""
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        perm = torch.randperm(n, device=device)
        layer = 0
        if self.manifold:
            points = mixing_points(model)
            layer = points[int(torch.randint(len(points), ()))]
        return lam, perm, layer

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        x_adv = self.adversarial(model, batch, ctx)
        n, device = batch.x.shape[0], batch.x.device
        clean, _ = mixup_loss(model, batch.x, batch.y, *self.draw(model, n, device))
        adv, _ = mixup_loss(model, x_adv, batch.y, *self.draw(model, n, device))
        metrics = {"clean_mix": float(clean.detach()), "adv_mix": float(adv.detach())}
        return LossOutput(0.5 * clean + 0.5 * adv, None, metrics)


@METHODS.register("avmixup")
@forwards_base
class AVmixup(PGDBased):
    """Adversarial vertex mixup (Lee et al., CVPR 2020): the adversarial vertex
    ``x_v = x + gamma (x' - x)`` (clipped to [0, 1]), a per-sample ``a ~ U(0, 1)``, and

        x~ = a x + (1 - a) x_v,   y~ = a phi(y, lam1) + (1 - a) phi(y, lam2),   L = CE(f(x~), y~),

    where ``phi(y, lam)`` puts ``lam`` on ``y`` and ``(1 - lam)/(K - 1)`` on every other class."""

    name = "avmixup"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        gamma: float = 2.0,
        lam1: float = 1.0,
        lam2: float = 0.1,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        self.gamma = check_positive(gamma, "gamma")
        for name, v in (("lam1", lam1), ("lam2", lam2)):
            if not 0 <= v <= 1:
                raise RobustlabError(f"{name} must be in [0, 1], got {v!r}.")
        self.lam1, self.lam2 = float(lam1), float(lam2)

    def draw(self, n: int, device: torch.device) -> Tensor:
        """The per-sample interpolation coefficients ``a ~ U(0, 1)``."""
        return torch.rand(n, device=device)

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        x, y = batch.x, batch.y
        x_adv = self.adversarial(model, batch, ctx)
        vertex = (x + self.gamma * (x_adv - x)).clamp(0.0, 1.0)
        a = self.draw(x.shape[0], x.device)
        a_x = a.reshape(-1, *[1] * (x.dim() - 1))
        logits = model(a_x * x + (1.0 - a_x) * vertex)
        k = logits.shape[1]
        a_y = a[:, None]
        target = a_y * smooth_labels(y, k, self.lam1) + (1.0 - a_y) * smooth_labels(y, k, self.lam2)
        return LossOutput(soft_cross_entropy(logits, target).mean(), None)
