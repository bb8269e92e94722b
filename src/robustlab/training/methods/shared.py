"""Steps shared by the adversarial-training methods: inner maximisations, the test seam, feature
taps, gradient reversal, EMA copies and layer-wise weight perturbations (the eps ramp is in
:mod:`robustlab.training.schedules`).

Each piece lives here once and is used by the method modules (:mod:`.regularized`,
:mod:`.weight_perturbation`, :mod:`.reweighted`, :mod:`.mixing`, :mod:`.distillation`,
:mod:`.forgetting`, :mod:`.vat`, :mod:`.auxiliary`). The inner attacks are
:class:`robustlab.attacks.PGD` with a method-specific objective.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from robustlab.attacks import PGD
from robustlab.errors import RobustlabError
from robustlab.losses.adversarial import divergence
from robustlab.runtime.modes import eval_mode
from robustlab.threat import Threat
from robustlab.training.method import Method

# --------------------------------------------------------------------------- test seam


@contextmanager
def fixed_adversarial(method: Method, x_adv: Tensor | Callable[..., Tensor]) -> Iterator[Method]:
    """Within the block, ``method.adversarial(model, batch, ctx)`` returns ``x_adv`` (or calls it
    with the same arguments) instead of running the inner attack.

    The seam through which tests replace the attack by a fixed perturbation, and through which
    AWP/RWP evaluate a method's loss twice at the same adversarial points.
    """
    fn = x_adv if callable(x_adv) else (lambda model, batch, ctx: x_adv)
    had = "adversarial" in vars(method)
    previous = vars(method).get("adversarial")
    object.__setattr__(method, "adversarial", fn)
    try:
        yield method
    finally:
        if had:
            object.__setattr__(method, "adversarial", previous)
        else:
            object.__delattr__(method, "adversarial")


# --------------------------------------------------------------------------- inner attacks


def divergence_objective(ref_logits: Tensor, distance: str = "kl"):
    """A PGD objective ``(logits, y, target) -> D(p_ref, p(x'))`` per sample (TRADES' inner
    maximisation of the KL to the clean prediction; SCORE's squared distance)."""
    fn = divergence(distance)
    ref = ref_logits.detach()

    def objective(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        return fn(ref, logits)

    objective.__name__ = f"{distance}-to-clean"
    return objective


def divergence_attack(
    model: nn.Module,
    x: Tensor,
    threat: Threat,
    steps: int,
    step_size: float | None,
    distance: str = "kl",
) -> Tensor:
    """``argmax_{x' in B(x)} D(p(x), p(x'))`` by PGD from a uniform random start (the inner
    problem of TRADES, Zhang et al. 2019). The clean prediction is taken in eval mode, as the attack's.

    (The TRADES reference starts at ``x + 0.001 N(0, I)``; a uniform start inside the ball serves
    the same purpose, a non-zero gradient of a divergence that is minimal at ``x' = x``.)
    """
    with torch.no_grad(), eval_mode(model):
        ref = model(x)
    attack = PGD(
        threat,
        steps=steps,
        step_size=step_size,
        loss=divergence_objective(ref, distance),
        early_stop=False,
    )
    dummy = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return attack.maximize(model, x, dummy)


# --------------------------------------------------------------------------- features


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's final ``nn.Linear`` (its classifier), whose input is the feature vector."""
    from robustlab.models.factory import unwrap

    linears = [m for m in unwrap(model).modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RobustlabError(
            f"{type(model).__name__} has no nn.Linear layer; feature-based methods (dial, "
            "rotation, iat manifold) need a model whose last layer is Linear."
        )
    return linears[-1]


def features_and_logits(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """One forward pass returning the penultimate features (the input of the last Linear) and
    the logits."""
    captured: list[Tensor] = []
    handle = last_linear(model).register_forward_pre_hook(lambda m, inp: captured.append(inp[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1), logits


def feature_dim(model: nn.Module) -> int:
    return last_linear(model).in_features


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity forward, gradient multiplied by ``-scale`` backward (Ganin & Lempitsky 2015)."""
    return _GradReverse.apply(x, scale)


# --------------------------------------------------------------------------- model copies


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with gradients off (an EMA teacher, a stable model)."""
    from robustlab.models.factory import unwrap

    twin = copy.deepcopy(unwrap(model))
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every layer re-initialised (a peer model of the same architecture)."""
    from robustlab.models.factory import unwrap

    twin = copy.deepcopy(unwrap(model))
    for m in twin.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * source`` for parameters; buffers are copied."""
    from robustlab.models.factory import unwrap

    source = unwrap(source)
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s.detach(), 1.0 - decay)
    for t, s in zip(target.buffers(), source.buffers()):
        t.copy_(s)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: Tensor) -> Tensor:
    """Logits of a frozen model in eval mode, without gradients."""
    with eval_mode(teacher):
        return teacher(x)


# --------------------------------------------------------------------------- weight perturbation


def perturbable(model: nn.Module) -> list[nn.Parameter]:
    """The weights AWP perturbs: trainable tensors with more than one dimension (not biases or
    normalisation scales, as in Wu et al. 2020)."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() > 1]


class WeightShift:
    """Weights moved to ``w + v`` and put back *exactly* (a saved copy is restored, so ranks of a
    distributed run, each with its own ``v``, keep bit-identical weights)."""

    def __init__(self, params: list[nn.Parameter], delta: list[Tensor]) -> None:
        self.params = params
        with torch.no_grad():
            self.saved = [p.detach().clone() for p in params]
            for p, d in zip(params, delta):
                p.add_(d)

    @torch.no_grad()
    def restore(self) -> None:
        for p, w in zip(self.params, self.saved):
            p.copy_(w)


def adversarial_weight_perturbation(
    params: list[nn.Parameter],
    loss_fn: Callable[[], Tensor | None],
    gamma: float,
    steps: int = 1,
) -> list[Tensor]:
    """Layer-wise adversarial weight perturbation ``v`` (AWP, Wu et al. 2020; RWP, Yu et al.
    2022, with ``steps`` > 1).

    Each step ascends ``loss_fn`` (evaluated at ``w + v``) with a normalised layer-wise step of
    the radius, ``v_l += gamma ||w_l|| g_l / ||g_l||``, and projects onto
    ``||v_l|| <= gamma ||w_l||`` (Wu et al., Alg. 1, with step size ``eta_2 = gamma``): one step
    lands on the boundary, as in the AWP reference code; further steps move along it.
    ``loss_fn`` may return None (nothing to ascend: RWP's loss-stationary condition), which ends
    the ascent. The weights are left unperturbed; the caller applies ``v`` with
    :class:`WeightShift` and restores them.
    """
    norms = [p.detach().norm() for p in params]
    v = [torch.zeros_like(p) for p in params]
    for _ in range(steps):
        shift = WeightShift(params, v)
        try:
            loss = loss_fn()
            grads = (
                torch.autograd.grad(loss, params, allow_unused=True) if loss is not None else None
            )
        finally:
            shift.restore()
        if grads is None:
            break
        for vl, g, w_norm in zip(v, grads, norms):
            if g is None:
                continue
            vl.add_(g, alpha=float(gamma * w_norm / (g.norm() + 1e-20)))
            v_norm = vl.norm()
            limit = gamma * w_norm
            if v_norm > limit:
                vl.mul_(limit / v_norm)
    return v
