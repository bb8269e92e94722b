"""The attack interface shared by every attack.

An attack is configured once and called many times: ``attack(model, x, y) -> x_adv``, or
``attack.run(model, x, y)`` for an :class:`AttackResult` with the success mask and per-sample norms.
The base class owns what every attack needs:

- input validation (a float batch in [0, 1], labels in range);
- the model in eval mode for the call, its previous modes restored afterwards;
- only points that are not yet adversarial are attacked (clean errors count as successes);
- restarts, each on the points still robust, keeping the per-sample worst case (the lowest margin);
  minimal-norm attacks restart on every clean-correct point and keep the smallest adversarial norm;
- a seeded ``torch.Generator`` for random starts, so a seeded attack is deterministic;
- gradients enabled for :meth:`Attack.perturb`, whatever the caller's grad mode;
- model calls on the fast paths proven equal to the plain path for this model, recorded in
  ``extras["fast_paths"]`` (:mod:`robustlab.runtime.fastpaths`);
- containment: every returned point lies in the threat ball (float tolerance of
  :meth:`Threat.contains`) and in [0, 1], or the run raises :class:`AttackContainmentError`.

Subclasses declare their hyper-parameters as class fields (:mod:`robustlab.attacks.params`) and
implement :meth:`Attack.perturb` on the batch of points to attack.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from robustlab.attacks.best import BestPoints
from robustlab.attacks.geometry import check_norm, perturbation_norms
from robustlab.attacks.objectives import Objective, adversarial_score, is_adversarial
from robustlab.attacks.params import declared_init, declares_params
from robustlab.attacks.registry import OBJECTIVES
from robustlab.errors import RobustlabError
from robustlab.runtime.fastpaths import FastPathGuard, FastPaths
from robustlab.runtime.modes import eval_mode
from robustlab.threat import Threat
from robustlab.validation import check_inputs, check_int, check_labels, check_logits


class AttackContainmentError(RobustlabError):
    """An attack returned a point outside its threat ball or the [0, 1] box: a bug in the attack,
    never clipped or dropped silently."""


#: float tolerance of the containment check, the default of :meth:`Threat.contains`
CONTAINMENT_ATOL = 1e-5


def check_containment(name: str, x_adv: Tensor, x: Tensor, threat: Threat | None) -> None:
    """Raise :class:`AttackContainmentError` unless every ``x_adv`` lies in ``threat``'s ball
    around ``x`` (relative and absolute float tolerance ``1e-5``) and in [0, 1]; ``threat=None``
    (a minimal-norm attack without eps) checks the box only."""
    x_adv, atol = x_adv.detach(), CONTAINMENT_ATOL
    flat = x_adv.reshape(x_adv.shape[0], -1)
    violation = torch.maximum(-flat, flat - 1).clamp_min(0).amax(1).nan_to_num(float("inf"))
    bad = violation > atol
    what = "[0, 1]"
    if threat is not None:
        excess = (threat.norms(x_adv - x) - threat.eps).clamp_min(0).nan_to_num(float("inf"))
        violation = torch.maximum(violation, excess)
        bad = ~threat.contains(x_adv, x, atol=atol)
        what = f"the threat {threat} or [0, 1]"
    if bad.any():
        raise AttackContainmentError(
            f"internal error: {name} returned {int(bad.sum())} of {len(bad)} points outside "
            f"{what} (largest violation {float(violation[bad].max()):.3g}); please report it."
        )


def minimal_norm_score(norms: Tensor, adversarial: Tensor) -> Tensor:
    """``-norm`` where adversarial, ``-inf`` elsewhere: the larger, the better a minimal-norm
    candidate (used to pick among restarts, target classes and iterations)."""
    return torch.where(adversarial, -norms, torch.full_like(norms, float("-inf")))


@dataclass
class AttackResult:
    """What an attack did to each sample."""

    x_adv: Tensor
    success: Tensor  # (N,) bool: adversarial at the end (clean errors included)
    clean_correct: Tensor  # (N,) bool: correctly classified before the attack
    norms: Tensor  # (N,) norm of x_adv - x in the threat's norm
    threat: Threat | None
    forward_passes: int = 0  # model evaluations on single samples, summed over the batch
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def robust(self) -> Tensor:
        """(N,) bool: correct and not broken."""
        return ~self.success

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())

    @property
    def success_rate(self) -> float:
        """Share of the clean-correct points the attack broke."""
        n = int(self.clean_correct.sum())
        return float((self.success & self.clean_correct).sum()) / n if n else 0.0


class Attack(ABC):
    """Base class: subclasses set ``name``, declare their parameters (``steps = param(40,
    integer)``, see :mod:`robustlab.attacks.params`) and implement :meth:`perturb`."""

    name: ClassVar[str] = "attack"
    #: minimal-norm attacks search for the smallest perturbation instead of staying in a ball
    minimal_norm: ClassVar[bool] = False
    #: gradients are averaged over this many forward passes (EOT, Athalye et al. 2018); attacks
    #: that compute gradients through :meth:`loss_gradient` honour it, see ``attacks/eot.py``
    eot_samples: int = 1
    #: whether the attack's gradients go through :meth:`loss_gradient` (so EOT applies)
    supports_eot: ClassVar[bool] = False
    #: the norm a minimal-norm attack minimises when given neither ``norm=`` nor a threat
    default_norm: ClassVar[str | None] = None
    #: norms a minimal-norm attack can minimise (``norm=``)
    supported_norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")
    #: the objective of ``loss=None``
    default_loss: ClassVar[str] = "ce"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that declares parameters gets the ``__init__`` built from them (a ball
        attack takes its norm from the threat: no ``norm=`` unless it declares one)."""
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls) or not declares_params(cls):
            return
        bases = cls.__mro__[1 : cls.__mro__.index(Attack)]
        inits = [vars(k)["__init__"] for k in bases if "__init__" in vars(k)]
        if any(not getattr(init, "declared", False) for init in inits):
            raise TypeError(f"{cls.__name__} declares parameters below a hand-written __init__.")
        cls.__init__ = declared_init(cls, Attack, () if cls.minimal_norm else ("norm",))

    def __init__(
        self,
        threat: Threat | str | None,
        *,
        norm: str | None = None,
        loss: str | Objective | None = "ce",
        targeted: bool = False,
        restarts: int = 1,
        seed: int | None = None,
    ) -> None:
        self.threat = Threat.parse(threat) if threat is not None else None
        if self.threat is None and not self.minimal_norm:
            raise RobustlabError(f"{self.name} needs a threat such as 'linf:0.3'.")
        #: the norm measured (and, for minimal-norm attacks, minimised). A minimal-norm attack takes
        #: ``norm="l2"`` alone (pure minimal norm) or a threat ``"l2:1.5"`` (success only within
        #: eps); both together must agree.
        if not self.minimal_norm and norm is not None:
            raise RobustlabError(f"{self.name} takes its norm from the threat; drop norm={norm!r}.")
        if self.minimal_norm and self.threat is None and norm is None:
            norm = self.default_norm
            if norm is None:
                raise RobustlabError(f"{self.name} needs norm= (one of {self.supported_norms}).")
        self.norm = check_norm(
            norm if norm is not None else self.threat.norm, self.supported_norms, self.name
        )
        if self.threat is not None and self.threat.norm != self.norm:
            raise RobustlabError(
                f"{self.name}: norm={norm!r} contradicts the threat {self.threat}; give one of them."
            )
        loss = self.default_loss if loss is None else loss
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.objective: Objective = OBJECTIVES.get(loss) if isinstance(loss, str) else loss
        self.targeted = bool(targeted)
        self.restarts = check_int(restarts, "restarts")
        self.seed = seed
        self.forward_passes = 0

    # --------------------------------------------------------------------- public API
    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None = None
    ) -> Tensor:
        return self.run(model, x, y, target).x_adv

    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None = None
    ) -> AttackResult:
        """Attack ``(x, y)``; targeted attacks need ``target`` labels (N,)."""
        check_inputs(x)
        y = check_labels(y, x.shape[0])
        if self.targeted != (target is not None):
            raise RobustlabError(
                f"{self.name} is targeted: pass target labels."
                if self.targeted
                else f"{self.name} is untargeted: create it with targeted=True to pass targets."
            )
        if target is not None:
            target = check_labels(target, x.shape[0], name="target labels")
        generator = self._generator(x.device)
        self.forward_passes = 0
        self._fast = FastPathGuard()
        with eval_mode(model):
            logits = self._predict(model, x)
            check_labels(y, x.shape[0], num_classes=logits.shape[1])
            clean_correct = logits.argmax(1) == y
            initial = is_adversarial(logits, y, target)
            best = BestPoints(x, self._score(x, x, logits, y, target), initial.clone())
            for restart in range(self.restarts):
                self._restart = restart
                todo = (~initial).nonzero().squeeze(1) if self.minimal_norm else best.remaining()
                if todo.numel() == 0:
                    break
                t = target[todo] if target is not None else None
                with torch.enable_grad():  # also inside the caller's torch.no_grad()
                    candidate = self.perturb(model, x[todo], y[todo], t, generator).detach()
                cand_logits = self._predict(model, candidate)
                score = self._score(candidate, x[todo], cand_logits, y[todo], t)
                best.offer(todo, candidate, score, is_adversarial(cand_logits, y[todo], t))
        x_adv, done = best.x, best.done
        extras: dict[str, Any] = {}
        if self.minimal_norm:
            # the smallest adversarial norm found (0: clean error, inf: attack failed)
            extras["minimal_norms"] = -best.score
            if self.threat is not None:  # success only within eps; outside, x_adv falls back to x
                outside = done & ~self.threat.contains(x_adv, x)
                x_adv[outside] = x[outside]
                done &= ~outside
        check_containment(self.name, x_adv, x, self.threat)
        extras["fast_paths"] = self._fast.record.to_dict()
        return AttackResult(
            x_adv=x_adv,
            success=done,
            clean_correct=clean_correct,
            norms=perturbation_norms(x_adv - x, self.norm),
            threat=self.threat,
            forward_passes=self.forward_passes,
            extras=extras,
        )

    def maximize(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None = None
    ) -> Tensor:
        """Perturb every point, already adversarial or not, once (the inner maximisation of
        adversarial training, where the loss of misclassified points still matters)."""
        self._fast = FastPathGuard()
        with eval_mode(model), torch.enable_grad():
            return self.perturb(model, x, y, target, self._generator(x.device)).detach()

    @abstractmethod
    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Return adversarial candidates for every point of ``x`` (all not yet adversarial)."""

    def config(self) -> dict[str, Any]:
        """Hyper-parameters, recorded in results."""
        cfg = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        cfg.pop("objective", None)
        cfg.pop("forward_passes", None)
        cfg["threat"] = str(self.threat) if self.threat else None
        return {"name": self.name, **cfg}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    # --------------------------------------------------------------------- helpers for subclasses
    def _score(
        self, x_adv: Tensor, x: Tensor, logits: Tensor, y: Tensor, target: Tensor | None
    ) -> Tensor:
        """Restart selection, higher is better: the margin objective, or for minimal-norm attacks
        minus the norm of an adversarial candidate (-inf when not adversarial)."""
        if not self.minimal_norm:
            return adversarial_score(logits, y, target)
        return minimal_norm_score(
            perturbation_norms(x_adv - x, self.norm), is_adversarial(logits, y, target)
        )

    def _predict(self, model: nn.Module, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._forward(model, x)

    def _forward(self, model: nn.Module, x: Tensor) -> Tensor:
        """One counted forward pass, checked to return (N, K) logits, on the fast paths (faster
        CPU kernels; channels-last images with gradients) proven equal to the plain path for this
        model at its first call (:mod:`robustlab.runtime.fastpaths`)."""
        self.forward_passes += x.shape[0]
        return check_logits(self._fast_guard().forward(model, x), x.shape[0])

    def _fast_guard(self) -> FastPathGuard:
        """This run's guard (one is started for calls outside :meth:`run` and :meth:`maximize`)."""
        guard = getattr(self, "_fast", None)
        if guard is None:
            guard = self._fast = FastPathGuard()
        return guard

    @property
    def _fast_paths(self) -> FastPaths:
        """The fast-path record of the current run (``extras["fast_paths"]``)."""
        return self._fast_guard().record

    def loss_gradient(
        self,
        model: nn.Module,
        x_adv: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        objective: Objective | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, per-sample objective and its input gradient at ``x_adv``.

        With ``eot_samples = n > 1`` (Expectation over Transformation, Athalye et al. 2018) the
        batch is replicated n times in one forward pass and the returned logits, objective and
        gradient are the means over the n draws of a randomized model: the gradient is
        ``(1/n) sum_i grad_x L(f_i(x))``.
        """
        objective = objective or self.objective
        n = max(1, int(self.eot_samples))
        x_in = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            if n == 1:
                logits = self._forward(model, x_in)
                values = objective(logits, y, target)
            else:
                reps = (n,) + (1,) * (x_in.dim() - 1)
                logits = self._forward(model, x_in.repeat(reps))
                t = target.repeat(n) if target is not None else None
                values = objective(logits, y.repeat(n), t).view(n, -1).mean(0)
                logits = logits.view(n, x_in.shape[0], -1).mean(0)
            (grad,) = torch.autograd.grad(values.sum(), x_in)
        return logits.detach(), values.detach(), grad.detach()

    def _success(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Success of this attack: ``target`` counts only for attacks created with targeted=True
        (an untargeted attack that sweeps over targets, like APGD-T, succeeds on any error)."""
        return is_adversarial(logits, y, target if self.targeted else None)

    def attack_over_targets(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        n_targets: int,
        attack_target: Callable[[Tensor, Tensor, Tensor], Tensor],
    ) -> Tensor:
        """Untargeted attack as a sweep of targeted ones over the top-``n_targets`` classes.

        For rank ``r = 1..n_targets`` the target of each point is its ``r``-th most likely wrong
        class at the clean input; ``attack_target(x, y, target)`` runs on the points not yet
        misclassified, and the candidate with the best untargeted margin is kept (APGD-T and
        FAB-T of Croce & Hein 2020, multi-targeted MD of Ma et al. 2021).
        """
        logits = self._predict(model, x)
        targets = top_k_targets(logits, y, n_targets)
        best = BestPoints(x, adversarial_score(logits, y), is_adversarial(logits, y))
        for r in range(targets.shape[1]):
            todo = best.remaining()
            if todo.numel() == 0:
                break
            cand = attack_target(x[todo], y[todo], targets[todo, r]).detach()
            cand_logits = self._predict(model, cand)
            yt = y[todo]
            best.offer(
                todo, cand, adversarial_score(cand_logits, yt), is_adversarial(cand_logits, yt)
            )
        return best.x

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(int(self.seed))


def top_k_targets(logits: Tensor, y: Tensor, k: int) -> Tensor:
    """(N, min(k, K-1)) wrong classes sorted by decreasing logit: the targets of APGD-T / FAB-T."""
    k = min(check_int(k, "n_targets"), logits.shape[1] - 1)
    masked = logits.detach().scatter(1, y[:, None], float("-inf"))
    return masked.topk(k, dim=1).indices
