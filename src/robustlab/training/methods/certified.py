"""Certified training: losses on provable bounds of the worst case.

With ``m`` the lower bounds of the margins ``z_y - z_j`` over the eps ball (0 at ``j = y``),
``CE(-m, y)`` upper-bounds the worst-case cross-entropy (Wong & Kolter 2018; Gowal et al. 2018).
The radius follows the trainer's eps ramp (``ctx.eps_scale``); schedules of the mixing
coefficients run over the same ramp.

* ``ibp`` -- Gowal et al. 2018: ``kappa CE(z, y) + (1 - kappa) CE(-m_IBP, y)``, ``kappa`` from 1
  to 0.5 over the ramp, training radius ``1.1 eps`` (M87).
* ``crown-ibp`` -- Zhang et al. 2020: ``m = beta m_CROWN-IBP + (1 - beta) m_IBP``, ``beta`` from 1
  to 0 over the ramp, ``kappa`` as for IBP (M12).
* ``cc-ibp``, ``mtl-ibp``, ``exp-ibp`` -- the expressive losses of De Palma et al. 2024 (M7) with
  one coefficient ``alpha`` between an adversarial point ``x_adv`` (PGD) and IBP:
  CC-IBP ``CE(-[(1 - alpha) d_adv + alpha m_IBP], y)`` with ``d_adv = z_y(x_adv) - z(x_adv)``;
  MTL-IBP ``(1 - alpha) CE(z(x_adv), y) + alpha CE(-m_IBP, y)``;
  Exp-IBP ``CE(z(x_adv), y)^(1 - alpha) CE(-m_IBP, y)^alpha`` (per sample).
* ``gaussian-noise`` -- Cohen et al. 2019: ``CE(f(x + sigma n), y)``, ``n ~ N(0, I)``, the
  training that randomized smoothing needs (B10).
* ``emma`` -- Hu et al. 2023: cross-entropy on EMMA logits with per-class-pair Lipschitz
  constants from power iteration (M18).

Every bound is computed on the model's compiled graph, checked against the model first: layer
types, hooks (:func:`~robustlab.certify.graph.compile_model`) and, on each batch, the graph's
outputs against the step's own logits (:func:`~robustlab.certify.graph.verify_graph`; the logits
are reused, so the check costs one gradient-free forward of the graph). EMMA's Lipschitz
constants come from the same graph and are checked the same way.

The IBP-based methods log the propagation tightness of Mao et al. 2024 (M4) -- measured on the
first ``tightness_samples`` inputs of every ``tightness_every``-th batch at the threat's full
radius, and reported at every step as the latest measurement -- and the share of the batch
verified by the training bound.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks import PGD
from robustlab.certify.graph import compile_model, verify_graph
from robustlab.certify.ibp import ibp
from robustlab.certify.lipschitz import (
    PowerIteration,
    emma_logits,
    l2_radius,
    network_constants,
    pair_constants,
)
from robustlab.certify.propagation import backward, setup
from robustlab.certify.spec import as_bound_threat, margin_spec
from robustlab.certify.tightness import propagation_tightness
from robustlab.errors import RobustlabError
from robustlab.threat import Threat
from robustlab.training.method import Batch, LossOutput, Method, StepContext, forwards_base
from robustlab.training.methods.registry import METHODS
from robustlab.training.schedules import ramp_between, ramped_eps
from robustlab.validation import check_int, check_positive


def _unit(value: float, name: str) -> float:
    v = check_positive(value, name, allow_zero=True)
    if v > 1:
        raise RobustlabError(f"{name} must be in [0, 1], got {value!r}.")
    return v


class BoundTraining(Method):
    """Shared parts: the threat, the training radius, the kappa schedule, the logged metrics."""

    #: training radius / evaluation radius when ``eps_factor`` is not given
    default_eps_factor: float = 1.0

    def __init__(
        self,
        threat: Threat | str = "linf:0.1",
        *,
        eps_factor: float | None = None,
        kappa_start: float = 1.0,
        kappa_end: float = 0.5,
        tightness_samples: int = 16,
        tightness_every: int = 10,
    ) -> None:
        super().__init__()
        self.threat = as_bound_threat(threat)
        self.eps_factor = check_positive(
            self.default_eps_factor if eps_factor is None else eps_factor, "eps_factor"
        )
        self.kappa_start = _unit(kappa_start, "kappa_start")
        self.kappa_end = _unit(kappa_end, "kappa_end")
        self.tightness_samples = check_int(tightness_samples, "tightness_samples", minimum=0)
        self.tightness_every = check_int(tightness_every, "tightness_every")
        self._tightness: float | None = None

    def train_threat(self, ctx: StepContext) -> Threat:
        return self.threat.with_eps(ramped_eps(self.threat.eps, ctx.eps_scale, self.eps_factor))

    @abstractmethod
    def robust_loss(
        self, model: nn.Module, batch: Batch, threat: Threat, coef: dict[str, float],
        logits: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """(per-sample robust loss, the margin lower bounds it used) at radius ``threat.eps``
        with the scheduled coefficients ``coef``; ``logits`` is ``model(batch.x)``, against which
        the bound graph is checked (:func:`~robustlab.certify.propagation.setup`)."""

    def schedules(self, ctx: StepContext) -> dict[str, float]:
        """The scheduled coefficients at this step."""
        return {"kappa": ramp_between(self.kappa_start, self.kappa_end, ctx.eps_scale)}

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        logits = model(batch.x)
        clean = F.cross_entropy(logits, batch.y)
        threat = self.train_threat(ctx)
        coef = self.schedules(ctx)
        metrics: dict[str, float] = {"eps": threat.eps, **coef}
        if threat.eps <= 0:  # at radius 0 the bounds are the margins themselves
            loss = clean
            robust = clean.detach()
            verified = logits.detach().argmax(1) == batch.y
        else:
            per_sample, bounds = self.robust_loss(model, batch, threat, coef, logits.detach())
            robust = per_sample.mean()
            loss = coef["kappa"] * clean + (1 - coef["kappa"]) * robust
            verified = bounds.detach().scatter(1, batch.y[:, None], float("inf")).min(1).values > 0
        metrics.update(
            robust_loss=float(robust.detach()), verified_acc=float(verified.float().mean())
        )
        if self.tightness_samples:
            if self._tightness is None or ctx.step % self.tightness_every == 0:
                m = self.tightness_samples
                self._tightness = float(
                    propagation_tightness(model, batch.x[:m], self.threat, batch.y[:m]).mean()
                )
            metrics["tightness"] = self._tightness
        return LossOutput(loss, logits, metrics)


def ibp_margins(model: nn.Module, x: Tensor, y: Tensor, threat: Threat,
                logits: Tensor | None = None) -> Tensor:
    """IBP lower bounds (N, K) of the margins (differentiable in the weights); ``logits`` is
    ``model(x)`` when known (the bound graph is checked against it)."""
    state = setup(model, x, threat, logits=logits)
    k = state.graph.nodes[-1].shape[0]
    return ibp(state, margin_spec(y, k, x.dtype))


@METHODS.register("ibp")
class IBPTraining(BoundTraining):
    """IBP training (Gowal et al. 2018): kappa CE(clean) + (1 - kappa) CE(IBP worst case), trained
    at 1.1 x the target radius by default."""

    name = "ibp"
    default_eps_factor = 1.1

    def robust_loss(self, model, batch, threat, coef, logits):
        m = ibp_margins(model, batch.x, batch.y, threat, logits)
        return F.cross_entropy(-m, batch.y, reduction="none"), m


@METHODS.register("crown-ibp")
@forwards_base
class CrownIBPTraining(BoundTraining):
    """CROWN-IBP training (Zhang et al. 2020): bounds beta CROWN-IBP + (1 - beta) IBP, beta 1->0."""

    name = "crown-ibp"

    def __init__(
        self,
        threat: Threat | str = "linf:0.1",
        *,
        beta_start: float = 1.0,
        beta_end: float = 0.0,
        **base: Any,
    ) -> None:
        super().__init__(threat, **base)
        self.beta_start = _unit(beta_start, "beta_start")
        self.beta_end = _unit(beta_end, "beta_end")

    def schedules(self, ctx: StepContext) -> dict[str, float]:
        return {**super().schedules(ctx), "beta": ramp_between(self.beta_start, self.beta_end, ctx.eps_scale)}

    def robust_loss(self, model, batch, threat, coef, logits):
        state = setup(model, batch.x, threat, logits=logits)
        spec = margin_spec(batch.y, state.graph.nodes[-1].shape[0], batch.x.dtype)
        m = ibp(state, spec)
        beta = coef["beta"]
        if beta > 1e-5:  # CROWN-IBP on the intervals IBP just computed
            m = beta * backward(state, state.graph.output, spec) + (1 - beta) * m
        return F.cross_entropy(-m, batch.y, reduction="none"), m


class ExpressiveTraining(BoundTraining):
    """Expressive losses (De Palma et al. 2024): one ``alpha`` between PGD and IBP; no kappa."""

    def __init__(
        self,
        threat: Threat | str = "linf:0.1",
        *,
        alpha: float = 0.5,
        eps_factor: float | None = None,
        attack_steps: int = 1,
        tightness_samples: int = 16,
        tightness_every: int = 10,
    ) -> None:
        super().__init__(
            threat,
            eps_factor=eps_factor,
            kappa_start=0.0,
            kappa_end=0.0,
            tightness_samples=tightness_samples,
            tightness_every=tightness_every,
        )
        self.alpha = _unit(alpha, "alpha")
        self.attack_steps = check_int(attack_steps, "attack_steps")

    def adversarial(self, model: nn.Module, batch: Batch, threat: Threat) -> Tensor:
        """PGD point: one step of 1.25 eps from a random start (FGSM-RS), or K steps of
        2.5 eps / K."""
        steps = self.attack_steps
        step = threat.eps * (1.25 if steps == 1 else 2.5 / steps)
        attack = PGD(threat, steps=steps, step_size=step, random_start=True, early_stop=False)
        return attack(model, batch.x, batch.y)

    def robust_loss(self, model, batch, threat, coef, logits):
        x_adv = self.adversarial(model, batch, threat)
        z_adv = model(x_adv)
        m = ibp_margins(model, batch.x, batch.y, threat, logits)
        return self.combine(z_adv, m, batch.y), m

    @abstractmethod
    def combine(self, z_adv: Tensor, m: Tensor, y: Tensor) -> Tensor:
        """Implemented by each subclass."""


@METHODS.register("cc-ibp")
class CCIBP(ExpressiveTraining):
    """CC-IBP (De Palma et al. 2024): CE of the convex combination of adversarial and IBP
    logit differences."""

    name = "cc-ibp"

    def combine(self, z_adv, m, y):
        d_adv = z_adv.gather(1, y[:, None]) - z_adv
        return F.cross_entropy(-((1 - self.alpha) * d_adv + self.alpha * m), y, reduction="none")


@METHODS.register("mtl-ibp")
class MTLIBP(ExpressiveTraining):
    """MTL-IBP (De Palma et al. 2024): (1 - alpha) CE(adversarial) + alpha CE(IBP)."""

    name = "mtl-ibp"

    def combine(self, z_adv, m, y):
        adv = F.cross_entropy(z_adv, y, reduction="none")
        return (1 - self.alpha) * adv + self.alpha * F.cross_entropy(-m, y, reduction="none")


@METHODS.register("exp-ibp")
class ExpIBP(ExpressiveTraining):
    """Exp-IBP (De Palma et al. 2024): CE(adversarial)^(1 - alpha) * CE(IBP)^alpha."""

    name = "exp-ibp"

    def combine(self, z_adv, m, y):
        adv = F.cross_entropy(z_adv, y, reduction="none").clamp_min(1e-12)
        ver = F.cross_entropy(-m, y, reduction="none").clamp_min(1e-12)
        return adv.pow(1 - self.alpha) * ver.pow(self.alpha)


@METHODS.register("gaussian-noise")
class GaussianNoise(Method):
    """Gaussian data augmentation for randomized smoothing (Cohen et al. 2019): CE(f(x + sigma n))."""

    name = "gaussian-noise"

    def __init__(self, sigma: float = 0.25) -> None:
        super().__init__()
        self.sigma = check_positive(sigma, "sigma")

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        noisy = batch.x + self.sigma * torch.randn_like(batch.x)
        logits = model(noisy)
        return LossOutput(F.cross_entropy(logits, batch.y), logits, {})


@METHODS.register("emma")
class EMMA(Method):
    """EMMA (Hu et al. 2023): CE on logits raised by eps_j K_yj, with Lipschitz constants from
    power iteration (differentiable, warm-started vectors kept as buffers)."""

    name = "emma"

    def __init__(self, threat: Threat | str = "l2:1.58", iterations: int = 2) -> None:
        super().__init__()
        self.threat = Threat.parse(threat)
        self.power = PowerIteration(iterations)

    def setup(self, trainer) -> None:
        """Create the power-iteration vectors before a checkpoint may be loaded into them."""
        graph = compile_model(trainer.model, trainer.train_data.input_shape)
        network_constants(graph, self.power)

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        graph = compile_model(model, tuple(batch.x.shape[1:]))
        if graph.uses_batch_statistics():
            raise RobustlabError("EMMA needs a model without BatchNorm in training mode.")
        logits = model(batch.x)
        verify_graph(graph, model, batch.x, logits=logits.detach())  # constants are the graph's
        feature, total = network_constants(graph, self.power)
        lip = float(total.detach())
        consts = pair_constants(graph, batch.y, feature, total)
        eps = ramped_eps(l2_radius(self.threat, tuple(batch.x.shape[1:])), ctx.eps_scale)
        if eps <= 0:
            return LossOutput(F.cross_entropy(logits, batch.y), logits, {"lipschitz": lip})
        loss = F.cross_entropy(emma_logits(logits, batch.y, consts, eps), batch.y)
        margin = logits.gather(1, batch.y[:, None]) - logits - eps * consts
        certified = margin.detach().scatter(1, batch.y[:, None], float("inf")).min(1).values > 0
        return LossOutput(
            loss,
            logits,
            {"lipschitz": lip, "certified_acc_estimate": float(certified.float().mean())},
        )

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "threat": str(self.threat), "iterations": self.power.iterations}
