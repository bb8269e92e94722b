"""Noisy-label and teacher/weight-perturbation methods against their papers' equations.

BMM dynamic bootstrapping (Arazo et al. 2019), Co-teaching (Han et al. 2018), AWP (Wu et al.
2020) and MTARD (Zhao et al. 2022): each behaviour that defines the method is checked on a tiny
model against a value computed independently from the paper's equation (float64 numpy / scipy),
or against an invariant, never against a recording of the code's own output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import beta as beta_dist
from torch import nn

from robustlab.models import build_model
from robustlab.training.method import Batch, StepContext
from robustlab.training.methods import METHODS
from robustlab.training.methods.noisy import BetaMixture, BMMBootstrapping, CoTeaching
from robustlab.training.methods.shared import (
    adversarial_weight_perturbation,
    fixed_adversarial,
    perturbable,
)
from robustlab.training.trainer import TrainConfig, Trainer

CTX = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)


def log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def ce(z, y):
    return -log_softmax(z)[np.arange(len(y)), y]


def kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(1)


def linear(w, b=None) -> nn.Linear:
    w = np.asarray(w, dtype=float)
    m = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w))
        m.bias.copy_(torch.tensor(np.zeros(w.shape[0]) if b is None else b))
    return m


def t(a, dtype=torch.float32):
    return torch.tensor(np.asarray(a), dtype=dtype)


def dropout_bn_mlp(seed: int = 0) -> nn.Module:
    """An 8x8-digits MLP whose train-mode and eval-mode outputs differ (BN and dropout)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(32, 10),
    )  # fmt: skip


# ------------------------------------------------------------------- M19: BMM bootstrapping

# three classes, logits 6 x: sample 0 and 1 fit their label, 2 and 3 do not (argmax 1)
BX = np.array([[0.9, 0.1, 0.2], [0.5, 0.3, 0.4], [0.2, 0.6, 0.5], [0.1, 0.9, 0.2]])
BY = np.array([0, 0, 2, 0])
BZ = 6.0 * BX


def _set_mixture(method, alphas, betas, weights, lo=0.0, hi=2.2):
    with torch.no_grad():
        method.bmm.alphas.copy_(torch.tensor(alphas))
        method.bmm.betas.copy_(torch.tensor(betas))
        method.bmm.weights.copy_(torch.tensor(weights))
        method.loss_range.copy_(torch.tensor([lo, hi]))
        method.fitted.fill_(True)


def _posterior_of_high_component(loss, alphas, betas, weights, lo=0.0, hi=2.2):
    """Arazo et al., Eq. 6: ``p(k | l) = pi_k p(l | k) / sum_j pi_j p(l | j)``, with k the
    component of larger mean, on the loss scaled by the fitted range; clamped as in the paper's
    code."""
    x = np.clip((loss - lo) / (hi - lo + 1e-6), 1e-4, 1 - 1e-4)
    lik = np.asarray(weights) * beta_dist.pdf(x[:, None], alphas, betas)
    high = int(np.argmax(np.asarray(alphas) / (np.asarray(alphas) + np.asarray(betas))))
    return np.clip(lik[:, high] / lik.sum(1), 1e-4, 1 - 1e-4)


@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("swap", [False, True])
def test_bmm_loss_is_the_dynamic_bootstrapping_equation(mode, swap):
    """``l_i = -[(1 - w_i) e_y + w_i z_i] . log p_i`` (Eq. 9) with ``w_i`` the posterior of the
    HIGH-loss component, whatever its index in the mixture (``swap``); ``z`` the one-hot
    prediction (hard) or the prediction (soft)."""
    alphas, betas, weights = [2.0, 6.0], [6.0, 2.0], [0.6, 0.4]
    if swap:
        alphas, betas, weights = alphas[::-1], betas[::-1], weights[::-1]
    method = BMMBootstrapping(mode=mode, warmup_epochs=0)
    _set_mixture(method, alphas, betas, weights)
    model = linear(6.0 * np.eye(3))
    out = method.compute_loss(model, Batch(t(BX), torch.tensor(BY), torch.arange(4)), CTX)

    w = _posterior_of_high_component(ce(BZ, BY), alphas, betas, weights)
    assert w[0] < 0.01 and 0.2 < w[2] < 0.8 and w[3] > 0.99  # low, mixed and high weights
    p, logp = softmax(BZ), log_softmax(BZ)
    z = np.eye(3)[BZ.argmax(1)] if mode == "hard" else p
    target = (1 - w)[:, None] * np.eye(3)[BY] + w[:, None] * z
    expected = np.mean(-(target * logp).sum(1))
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert out.metrics["bmm_w"] == pytest.approx(w.mean(), rel=1e-5)


def test_bmm_high_loss_cluster_gets_w_near_one():
    """Fitted on two clear clusters of losses, the posterior is ~1 on the high-loss cluster (the
    noisy component) and ~0 on the low one."""
    gen = torch.Generator().manual_seed(0)
    low = 0.2 + 0.2 * torch.rand(160, generator=gen)
    high = 2.7 + 0.6 * torch.rand(40, generator=gen)
    method = BMMBootstrapping(em_iterations=30)
    method.fit_losses(torch.cat([low, high]))
    assert float(method.noisy_posterior(low).max()) < 0.01
    assert float(method.noisy_posterior(high).min()) > 0.99
    # the noisy component's mixture weight is the high cluster's share of the fitted losses
    # (those within the 5th-95th percentiles: 150 low, 30 high)
    noisy = int(torch.argmax(method.bmm.alphas / (method.bmm.alphas + method.bmm.betas)))
    assert float(method.bmm.weights[noisy]) == pytest.approx(30 / 180, abs=0.01)


def test_bmm_fits_eval_mode_losses_of_the_training_set(digits, monkeypatch):
    """The mixture is fitted to the losses of the network in eval mode (no dropout, BN running
    statistics), computed over the training set after the epoch, and the training modes are
    restored."""
    data = digits[0].head(96)
    fitted: list[torch.Tensor] = []
    original = BetaMixture.fit

    def spy(self, x, iterations=10):
        fitted.append(x.detach().clone())
        return original(self, x, iterations)

    monkeypatch.setattr(BetaMixture, "fit", spy)
    model = dropout_bn_mlp()
    method = METHODS.build("bmm-bootstrap", warmup_epochs=0)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, weight_decay=0.0)
    trainer = Trainer(model, method, data, cfg, progress=False)
    trainer.fit()

    x, y = data.x, data.y
    model.eval()
    with torch.no_grad():
        eval_ce = nn.functional.cross_entropy(model(x), y, reduction="none")
        model.train()
        train_ce = nn.functional.cross_entropy(model(x), y, reduction="none")
    assert float((train_ce - eval_ce).abs().mean()) > 0.05  # the two modes differ here
    torch.testing.assert_close(method.losses, eval_ce, rtol=1e-5, atol=1e-6)
    # what EM saw: the eval-mode losses within their 5th-95th percentiles, scaled to [0, 1]
    lo, hi = torch.quantile(eval_ce.double(), torch.tensor([0.05, 0.95], dtype=torch.float64))
    kept = eval_ce.double()[(eval_ce >= lo) & (eval_ce <= hi)]
    expected = ((kept - lo) / (hi - lo + 1e-6)).clamp(1e-4, 1 - 1e-4)
    assert len(fitted) == 1
    torch.testing.assert_close(fitted[0], expected, rtol=1e-5, atol=1e-6)

    # the epoch-end pass restores the modes it found
    model.train()
    method.on_epoch_end(trainer, 1)
    assert all(m.training for m in model.modules())


def test_bmm_posterior_of_a_batch_uses_eval_mode_losses(monkeypatch):
    """``w`` is read off the mixture at the batch's eval-mode losses (the scale it was fitted
    on), while the gradient comes from the train-mode forward; the model stays in train mode."""
    model = dropout_bn_mlp().train()
    method = BMMBootstrapping(warmup_epochs=0)
    _set_mixture(method, [2.0, 6.0], [6.0, 2.0], [0.6, 0.4], hi=4.0)
    seen: list[torch.Tensor] = []
    original = method.noisy_posterior

    def spy(loss):
        seen.append(loss.detach().clone())
        return original(loss)

    monkeypatch.setattr(method, "noisy_posterior", spy)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    with torch.no_grad():
        eval_ce = nn.functional.cross_entropy(model.eval()(x), y, reduction="none")
    model.train()
    method.compute_loss(model, Batch(x, y, torch.arange(16)), CTX)
    assert all(m.training for m in model.modules())
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], eval_ce, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- B12: Co-teaching

# the model (logits 4x) fits samples 0 and 1, its peer (logits -4x) fits samples 2 and 3
CX = np.array([[0.9, 0.1, 0.2], [0.1, 0.8, 0.3], [0.2, 0.9, 0.7], [0.8, 0.3, 0.1]])
CY = np.array([0, 1, 0, 2])


def test_co_teaching_updates_each_network_on_the_peers_selection():
    """Han et al., Alg. 1: ``D_f = argmin_{|D'| >= (1 - R)|D|} l(f, D')`` and the same for
    ``g``; ``f`` is updated on ``D_g`` and ``g`` on ``D_f``. The two networks disagree on which
    half of the batch is small-loss, so the cross-update differs from a self-update."""
    method = CoTeaching(forget_rate=0.5, gradual_epochs=0)
    model, method.peer = linear(4.0 * np.eye(3)), linear(-4.0 * np.eye(3))
    out = method.compute_loss(model, Batch(t(CX), torch.tensor(CY), torch.arange(4)), CTX)

    zf, zg = 4.0 * CX, -4.0 * CX
    lf, lg = ce(zf, CY), ce(zg, CY)
    picked_f, picked_g = np.argsort(lf)[:2], np.argsort(lg)[:2]
    assert set(picked_f) == {0, 1} and set(picked_g) == {2, 3}  # they disagree
    expected = lf[picked_g].mean() + lg[picked_f].mean()
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)

    out.loss.backward()  # d mean CE / dW = (P - Y)^T X / n over the samples the peer picked
    for net, z, rows in ((model, zf, picked_g), (method.peer, zg, picked_f)):
        grad = (softmax(z[rows]) - np.eye(3)[CY[rows]]).T @ CX[rows] / len(rows)
        np.testing.assert_allclose(net.weight.grad.numpy(), grad, atol=1e-6)


# ------------------------------------------------------------------- M70: AWP


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def test_weight_perturbation_is_projected_ascent_onto_the_layerwise_ball():
    """Wu et al., Alg. 1: ``v_l <- Pi(v_l + eta ||w_l|| g_l / ||g_l||)`` with ``Pi`` the
    projection onto ``||v_l|| <= gamma ||w_l||`` and (here) ``eta = gamma``. Computed in float64
    with a hand-written projection; with steps of the radius the projection is active, so every
    layer ends on the sphere ``||v_l|| = gamma ||w_l||``."""
    gamma, steps = 0.05, 3
    model = _mlp().double()
    x, y = torch.rand(12, 6, dtype=torch.float64), torch.randint(0, 3, (12,))
    params = perturbable(model)

    def loss():
        return nn.functional.cross_entropy(model(x), y)

    v = adversarial_weight_perturbation(params, loss, gamma, steps)

    w = [p.detach().clone() for p in params]
    ref = [torch.zeros_like(p) for p in w]
    for _ in range(steps):
        pert = [(wl + vl).requires_grad_(True) for wl, vl in zip(w, ref)]
        z = nn.functional.linear(
            torch.tanh(nn.functional.linear(x, pert[0], model[0].bias)), pert[1], model[2].bias
        )
        grads = torch.autograd.grad(nn.functional.cross_entropy(z, y), pert)
        for vl, g, wl in zip(ref, grads, w):
            vl += gamma * wl.norm() * g / g.norm()
            vl *= min(1.0, float(gamma * wl.norm() / vl.norm()))
    for vl, rl, wl in zip(v, ref, w):
        torch.testing.assert_close(vl, rl, rtol=1e-9, atol=1e-12)
        assert float(vl.norm() / wl.norm()) == pytest.approx(gamma, rel=1e-9)


def test_awp_applies_the_perturbation_then_restores_the_weights_exactly():
    gamma = 0.05
    method = METHODS.build("awp", threat="linf:0.1", gamma=gamma, awp_steps=2, steps=1)
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    with fixed_adversarial(method.base, (x + 0.05).clamp(0, 1)):
        out = method.compute_loss(model, Batch(x, y, torch.arange(10)), CTX)
    for p, w in zip(model.parameters(), before):
        if p.dim() > 1:  # the weight matrices sit on their layer's sphere around w
            assert float((p.detach() - w).norm() / w.norm()) == pytest.approx(gamma, rel=1e-4)
        else:  # biases are not perturbed
            assert torch.equal(p, w)
    out.loss.backward()
    method.before_optimizer_step(model)
    assert method._applied is None
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), before))


# ------------------------------------------------------------------- M25: MTARD

MX = np.array([[0.2, 0.5, 0.7], [0.9, 0.1, 0.4], [0.3, 0.8, 0.2], [0.6, 0.6, 0.6]])
MXA = MX + 0.1 * np.array([[1, -1, 1], [-1, 1, 1], [1, 1, -1], [-1, -1, 1]])
MY = np.array([0, 1, 2, 1])
W0 = np.array([[1.0, -2.0, 0.5], [-0.5, 1.5, 1.0], [0.3, 0.2, -1.2]])
WA, WN = W0[::-1].copy(), 0.5 * W0


def test_mtard_adaptive_teacher_weights_follow_the_update_rule():
    """Zhao et al., adaptive normalisation: with ``l~ = (L / L_init)^power`` for each part,
    ``w_nat <- w_nat - lr (w_nat - l~_nat / (l~_nat + l~_adv))`` and ``w_adv = 1 - w_nat``,
    ``L_init`` the first step's losses; ``L = w_adv KL_adv + w_nat KL_nat``. Three steps whose
    student weights change the two KL terms by different factors; a second loss evaluation
    before the optimiser step (SAM) does not apply the update twice."""
    lr, power = 0.2, 2.0
    m = METHODS.build(
        "mtard", threat="linf:0.1", robust_teacher=linear(WA), clean_teacher=linear(WN),
        weight_lr=lr, power=power, steps=1,
    )  # fmt: skip
    model = linear(W0)
    batch = Batch(t(MX), torch.tensor(MY), torch.arange(4))

    def parts(w):
        adv = kl(softmax(MXA @ WA.T), softmax(MXA @ w.T)).mean()
        nat = kl(softmax(MX @ WN.T), softmax(MX @ w.T)).mean()
        return nat, adv

    # students ever closer to the clean teacher: KL_nat falls much faster than KL_adv
    students = [W0, 0.6 * W0, 0.5 * W0 + 0.1 * WA]
    w_nat, initial, moved = 0.5, None, []
    for w in students:
        with torch.no_grad():
            model.weight.copy_(t(w))
        nat, adv = parts(w)
        initial = initial or (nat, adv)
        rn, ra = (nat / initial[0]) ** power, (adv / initial[1]) ** power
        w_nat = w_nat - lr * (w_nat - rn / (rn + ra))
        for _ in range(2):  # SAM: the loss is computed twice before the optimiser step
            with fixed_adversarial(m, t(MXA)):
                out = m.compute_loss(model, batch, CTX)
            expected = (1 - w_nat) * adv + w_nat * nat
            assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
            assert out.metrics["w_nat"] == pytest.approx(w_nat, rel=1e-5)
        m.after_optimizer_step(model)
        assert float(m.w_nat) == pytest.approx(w_nat, rel=1e-5)
        moved.append(abs(w_nat - 0.5))
    assert min(moved[1:]) > 0.05  # the weights moved: stuck at 0.5 would fail the loss checks


def test_mtard_teachers_stay_frozen_through_training(digits):
    """The teachers take no gradient, are not optimised, and run in eval mode (their batch-norm
    statistics and weights are bit-identical after training), while the student and the adaptive
    weight change."""
    data = digits[0].head(64)
    teachers = [dropout_bn_mlp(seed) for seed in (1, 2)]
    method = METHODS.build(
        "mtard", threat="linf:0.1", robust_teacher=teachers[0], clean_teacher=teachers[1], steps=1
    )
    frozen = [method.teacher_adv, method.teacher_nat]
    before = [{k: v.clone() for k, v in tm.state_dict().items()} for tm in frozen]
    torch.manual_seed(0)
    student = build_model("mlp", input_shape=data.input_shape, num_classes=10, hidden=(16,))
    start = [p.detach().clone() for p in student.parameters()]
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    trainer = Trainer(student, method, data, cfg, progress=False)
    trainer.fit()

    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    for tm, state in zip(frozen, before):
        assert not any(p.requires_grad for p in tm.parameters())
        assert not optimised & {id(p) for p in tm.parameters()}
        for k, v in tm.state_dict().items():
            assert torch.equal(v, state[k]), k
    assert not all(torch.equal(p, s) for p, s in zip(student.parameters(), start))
    assert float(method.w_nat) != 0.5  # two steps: the second one moved the weights
