"""Adversarial training with teachers or peers: ADR (EMA self-teacher), MTARD (two fixed
teachers), Mutual AT (peers trained jointly).

Teachers and peers are submodules of the method, so they are moved with it and saved in (and
restored from) the trainer's checkpoint. Frozen teachers have ``requires_grad=False``; peers are
trainable and the trainer optimises them with the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.losses.adversarial import kl_divergence, smooth_labels, soft_cross_entropy
from robustlab.threat import Threat
from robustlab.training.method import Batch, LossOutput, StepContext, forwards_base
from robustlab.training.methods.adversarial import PGDBased
from robustlab.training.methods.registry import METHODS
from robustlab.training.methods.shared import (
    ema_update,
    fresh_copy,
    frozen_copy,
    teacher_logits,
)
from robustlab.training.schedules import cosine_anneal
from robustlab.validation import check_int, check_positive


@forwards_base
class EMATeacher(PGDBased):
    """Shared machinery: an EMA copy of the model (``self.teacher``), created at setup and
    updated after every optimiser step."""

    def __init__(
        self, threat: Threat | str = "linf:0.3", *, decay: float = 0.999, **base: Any
    ) -> None:
        super().__init__(threat, **base)
        if not 0 <= decay < 1:
            raise RobustlabError(f"decay must be in [0, 1), got {decay!r}.")
        self.decay = float(decay)
        self.teacher: nn.Module | None = None

    def attach(self, model: nn.Module) -> None:
        """Create the EMA teacher as a copy of ``model`` (called by :meth:`setup`)."""
        self.teacher = frozen_copy(model)

    def setup(self, trainer) -> None:
        self.attach(trainer.model)

    def after_optimizer_step(self, model: nn.Module) -> None:
        ema_update(self.teacher, model, self.decay)


@METHODS.register("adr")
@forwards_base
class ADR(EMATeacher):
    """Annealing self-distillation rectification (ADR; Wu, Wang & Chen, ICLR 2024):
    PGD-AT whose hard label is replaced by the rectified soft target

        t = lam * e_y + (1 - lam) * softmax(z_T(x) / tau),    L = CE(f(x'), t),

    with ``z_T`` an EMA teacher (``decay``) evaluated on the clean input and ``tau``, ``lam``
    cosine-annealed over training from ``*_start`` to ``*_end``. With ``lam >= 0.5`` (the
    defaults) ``y`` stays the target's most likely class, which is the rectification.
    """

    name = "adr"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        tau_start: float = 2.5,
        tau_end: float = 1.5,
        lam_start: float = 0.7,
        lam_end: float = 0.5,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        for name, v in (("lam_start", lam_start), ("lam_end", lam_end)):
            if not 0 <= v <= 1:
                raise RobustlabError(f"{name} must be in [0, 1], got {v!r}.")
        self.tau_start = check_positive(tau_start, "tau_start")
        self.tau_end = check_positive(tau_end, "tau_end")
        self.lam_start, self.lam_end = float(lam_start), float(lam_end)

    def target(self, batch: Batch, ctx: StepContext, k: int) -> Tensor:
        tau = cosine_anneal(self.tau_start, self.tau_end, ctx.progress)
        lam = cosine_anneal(self.lam_start, self.lam_end, ctx.progress)
        soft = F.softmax(teacher_logits(self.teacher, batch.x).float() / tau, 1)
        return lam * smooth_labels(batch.y, k, 1.0) + (1.0 - lam) * soft

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        if self.teacher is None:
            raise RobustlabError("adr needs its EMA teacher: call setup(trainer) or attach(model).")
        x_adv = self.adversarial(model, batch, ctx)
        logits = model(x_adv)
        loss = soft_cross_entropy(logits, self.target(batch, ctx, logits.shape[1])).mean()
        return LossOutput(loss, logits)


def _load_teacher(teacher: str | Path | nn.Module | None, what: str) -> nn.Module:
    if teacher is None:
        raise RobustlabError(
            f"mtard needs a {what} teacher: pass {what}_teacher=<checkpoint path> or a module."
        )
    if isinstance(teacher, nn.Module):
        return frozen_copy(teacher)
    from robustlab.models import load_model

    model, _ = load_model(teacher)
    return frozen_copy(model)


@METHODS.register("mtard")
@forwards_base
class MTARD(PGDBased):
    """Multi-teacher adversarial robustness distillation (MTARD; Zhao et al., ECCV 2022): KL to a
    robust teacher at the PGD point and to a clean teacher at the clean point, adaptively weighted,

        L = w_adv KL(p_Tadv(x') || p_S(x')) + w_nat KL(p_Tnat(x) || p_S(x)),

    with ``x'`` from PGD-CE on the student, a robust teacher ``T_adv`` and a clean teacher
    ``T_nat`` (checkpoint paths or modules, frozen), and weights adapted by the adaptive
    normalisation loss: with ``l~ = (L / L_initial) ** power`` for each part,
    ``w_nat <- w_nat - lr (w_nat - l~_nat / (l~_nat + l~_adv))`` and ``w_adv = 1 - w_nat``,
    using the losses of the current step (the first step's losses are the initial ones).
    """

    name = "mtard"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        robust_teacher: str | nn.Module | None = None,
        clean_teacher: str | nn.Module | None = None,
        weight_lr: float = 0.025,
        power: float = 1.0,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        self.robust_teacher_source = _source(robust_teacher)
        self.clean_teacher_source = _source(clean_teacher)
        self.teacher_adv = _load_teacher(robust_teacher, "robust")
        self.teacher_nat = _load_teacher(clean_teacher, "clean")
        self.weight_lr = check_positive(weight_lr, "weight_lr")
        self.power = check_positive(power, "power")
        self.register_buffer("w_nat", torch.tensor(0.5))
        self.register_buffer("initial", torch.full((2,), float("nan")))  # (nat, adv)
        self._staged: tuple[Tensor, Tensor] | None = None

    def weights(self, nat: Tensor, adv: Tensor) -> tuple[Tensor, Tensor]:
        """The adapted ``(w_nat, initial losses)`` after seeing this step's losses."""
        current = torch.stack([nat.detach(), adv.detach()])
        initial = torch.where(torch.isnan(self.initial), current, self.initial)
        rel = (current / initial.clamp_min(1e-12)) ** self.power
        w_nat = self.w_nat - self.weight_lr * (self.w_nat - rel[0] / rel.sum())
        return w_nat, initial

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        x_adv = self.adversarial(model, batch, ctx)
        z_adv = model(x_adv)
        z = model(batch.x)
        adv = kl_divergence(teacher_logits(self.teacher_adv, x_adv), z_adv).mean()
        nat = kl_divergence(teacher_logits(self.teacher_nat, batch.x), z).mean()
        w_nat, initial = self.weights(nat, adv)
        self._staged = (w_nat, initial)
        loss = (1.0 - w_nat) * adv + w_nat * nat
        metrics = {"w_nat": float(w_nat), "kl_adv": float(adv.detach())}
        metrics["kl_nat"] = float(nat.detach())
        return LossOutput(loss, z, metrics)

    def after_optimizer_step(self, model: nn.Module) -> None:
        if self._staged is not None:
            self.w_nat.copy_(self._staged[0])
            self.initial.copy_(self._staged[1])
            self._staged = None

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threat": str(self.threat),
            "robust_teacher": self.robust_teacher_source,
            "clean_teacher": self.clean_teacher_source,
            "weight_lr": self.weight_lr,
            "power": self.power,
            "steps": self.steps,
            "step_size": self.step_size,
        }


def _source(teacher: Any) -> str | None:
    if teacher is None or isinstance(teacher, (str, Path)):
        return None if teacher is None else str(teacher)
    return f"<module {type(teacher).__name__}>"


@METHODS.register("mutual-at")
@forwards_base
class MutualAT(PGDBased):
    """Mutual adversarial training (MAT; Liu et al. 2021, "Mutual adversarial training: learning
    together is better than going alone"): ``peers`` extra models of the model's
    architecture (fresh initialisations, owned by the method and trained with it). Every model
    ``i`` is trained on the PGD points of every model ``j`` (its own and its peers'):

        L_i = mean_j [ (1 - alpha) CE(f_i(x'_j), y) + alpha KL(mean_{m != i} p_m(x'_j) || p_i(x'_j)) ]

    (the peers' mean prediction detached), and the method minimises ``sum_i L_i``.
    """

    name = "mutual-at"

    def __init__(
        self,
        threat: Threat | str = "linf:0.3",
        peers: int = 1,
        alpha: float = 0.5,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        self.peers = check_int(peers, "peers", minimum=1)
        if not 0 <= alpha <= 1:
            raise RobustlabError(f"alpha must be in [0, 1], got {alpha!r}.")
        self.alpha = float(alpha)
        self.peer_models = nn.ModuleList()

    def attach(self, model: nn.Module) -> None:
        """Create the peers (fresh copies of ``model``); called by :meth:`setup`."""
        device = next(model.parameters()).device
        self.peer_models = nn.ModuleList(fresh_copy(model).to(device) for _ in range(self.peers))

    def setup(self, trainer) -> None:
        self.attach(trainer.model)

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        if len(self.peer_models) != self.peers:
            raise RobustlabError("mutual-at needs its peers: call setup(trainer) or attach(model).")
        models = [model, *self.peer_models]
        k = len(models)
        points = [self.adversarial(m, batch, ctx) for m in models]
        # logits[i][j]: model i on the PGD points of model j
        logits = [[m(x) for x in points] for m in models]
        total = 0.0
        per_model = []
        for i in range(k):
            li = 0.0
            for j in range(k):
                ce = F.cross_entropy(logits[i][j], batch.y)
                peer_p = torch.stack(
                    [F.softmax(logits[m][j].detach().float(), 1) for m in range(k) if m != i]
                ).mean(0)
                kl = kl_divergence(peer_p.clamp_min(1e-12).log(), logits[i][j]).mean()
                li = li + (1.0 - self.alpha) * ce + self.alpha * kl
            li = li / k
            per_model.append(float(li.detach()))
            total = total + li
        metrics = {f"loss_model{i}": v for i, v in enumerate(per_model)}
        return LossOutput(total, logits[0][0], metrics)
