"""Each adversarial-training method's loss equals a hand-computed value on a tiny batch.

A 3-class linear model on 3 features, fixed tensors, and the inner attack replaced by a fixed
perturbation through the ``fixed_adversarial`` seam (or the method's ``draw`` seam for random
mixing coefficients). Expected values are computed independently in float64 numpy (or, where a
gradient is needed, with float64 autograd on a hand-written formula).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from robustlab.training.method import Batch, StepContext
from robustlab.training.methods import METHODS
from robustlab.training.methods.shared import fixed_adversarial

# ----------------------------------------------------------------------------- numpy reference


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def ce(z, y):
    return -log_softmax(z)[np.arange(len(y)), y]


def kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(1)


def onehot(y, k=3):
    return np.eye(k)[y]


# ----------------------------------------------------------------------------- fixtures

W0 = np.array([[1.0, -2.0, 0.5], [-0.5, 1.5, 1.0], [0.3, 0.2, -1.2]])
B0 = np.array([0.1, -0.2, 0.05])
X = np.array([[0.2, 0.5, 0.7], [0.9, 0.1, 0.4], [0.3, 0.8, 0.2], [0.6, 0.6, 0.6]])
DELTA = 0.1 * np.array([[1, -1, 1], [-1, 1, 1], [1, 1, -1], [-1, -1, 1]], dtype=float)
XA = X + DELTA
Y = np.array([0, 1, 2, 1])
CTX = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)


def linear(w=W0, b=B0) -> nn.Linear:
    m = nn.Linear(3, 3)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w))
        m.bias.copy_(torch.tensor(b))
    return m


def t(a, dtype=torch.float32):
    return torch.tensor(a, dtype=dtype)


BATCH = Batch(t(X), torch.tensor(Y), torch.arange(4))


def logits(x, w=W0, b=B0):
    return x @ w.T + b


def run(method, model, x_adv=XA, batch=BATCH, ctx=CTX):
    with fixed_adversarial(method, t(x_adv)):
        return method.compute_loss(model, batch, ctx)


def assert_loss_close(out, expected, tol=1e-5):
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=tol, abs=tol)


# ----------------------------------------------------------------------------- TRADES family


def test_trades():
    m = METHODS.build("trades", threat="linf:0.1", beta=6.0, steps=1)
    z, za = logits(X), logits(XA)
    assert_loss_close(run(m, linear()), np.mean(ce(z, Y) + 6.0 * kl(softmax(z), softmax(za))))


def test_trades_beta_ramp():
    m = METHODS.build("trades", threat="linf:0.1", beta=6.0, steps=1)
    ctx = StepContext(0, 0, 1, 1, ramps={"beta": 0.5})
    z, za = logits(X), logits(XA)
    assert_loss_close(run(m, linear(), ctx=ctx), np.mean(ce(z, Y) + 3.0 * kl(softmax(z), softmax(za))))


@pytest.mark.parametrize("natural", ["ce", "se"])
def test_score(natural):
    m = METHODS.build("score", threat="linf:0.1", beta=2.0, steps=1, natural=natural)
    p, pa = softmax(logits(X)), softmax(logits(XA))
    nat = ce(logits(X), Y) if natural == "ce" else ((p - onehot(Y)) ** 2).sum(1)
    assert_loss_close(run(m, linear()), np.mean(nat + 2.0 * ((p - pa) ** 2).sum(1)))


def test_mart():
    m = METHODS.build("mart", threat="linf:0.1", beta=5.0, steps=1)
    p, pa = softmax(logits(X)), softmax(logits(XA))
    rest = pa.copy()
    rest[np.arange(4), Y] = -1
    bce = -np.log(pa[np.arange(4), Y]) - np.log(1 - rest.max(1))
    reg = kl(p, pa) * (1 - p[np.arange(4), Y])
    assert_loss_close(run(m, linear()), np.mean(bce + 5.0 * reg))


def test_arow():
    m = METHODS.build("arow", threat="linf:0.1", beta=7.0, steps=1, smoothing=0.2)
    p, pa = softmax(logits(X)), softmax(logits(XA))
    target = 0.8 * onehot(Y) + 0.1 * (1 - onehot(Y))
    ls = -(target * np.log(p)).sum(1)
    assert_loss_close(run(m, linear()), np.mean(ls + 7.0 * kl(p, pa) * (1 - pa[np.arange(4), Y])))


# ----------------------------------------------------------------------------- weight perturbation


def _ce64(w, b, x):
    return torch.nn.functional.cross_entropy(x @ w.T + b, torch.tensor(Y))


def test_awp_pgd_at_perturbs_restores_and_steps_from_perturbed_gradient():
    gamma = 0.05
    m = METHODS.build("awp", threat="linf:0.1", base="pgd-at", gamma=gamma, steps=1)
    model = linear()
    # expected: v = gamma ||W|| G / ||G|| with G = (P - Y)^T X / N at W (bias not perturbed)
    pa = softmax(logits(XA))
    g = (pa - onehot(Y)).T @ XA / 4
    v = gamma * np.linalg.norm(W0) * g / np.linalg.norm(g)
    with fixed_adversarial(m.base, t(XA)):
        out = m.compute_loss(model, BATCH, CTX)
    assert_loss_close(out, np.mean(ce(logits(XA, W0 + v), Y)))
    assert np.allclose(model.weight.detach().numpy(), W0 + v, atol=1e-6)
    out.loss.backward()
    m.before_optimizer_step(model)
    assert np.allclose(model.weight.detach().numpy(), W0, atol=1e-6)
    p_pert = softmax(logits(XA, W0 + v))
    assert np.allclose(model.weight.grad.numpy(), (p_pert - onehot(Y)).T @ XA / 4, atol=1e-6)


def test_awp_trades_ascends_the_trades_loss():
    gamma, beta = 0.05, 3.0
    m = METHODS.build("awp", threat="linf:0.1", base="trades", gamma=gamma, beta=beta, steps=1)
    w = torch.tensor(W0, requires_grad=True)
    b = torch.tensor(B0)
    x, xa = t(X, torch.float64), t(XA, torch.float64)

    def trades(w):
        z, za = x @ w.T + b, xa @ w.T + b
        p = torch.softmax(z, 1)
        reg = (p * (torch.log_softmax(z, 1) - torch.log_softmax(za, 1))).sum(1).mean()
        return torch.nn.functional.cross_entropy(z, torch.tensor(Y)) + beta * reg

    (g,) = torch.autograd.grad(trades(w), w)
    v = gamma * w.detach().norm() * g / g.norm()
    with fixed_adversarial(m.base, t(XA)):
        out = m.compute_loss(linear(), BATCH, CTX)
    assert_loss_close(out, trades(w.detach() + v))


def test_rwp_only_ascends_samples_below_c_min():
    gamma, steps = 0.2, 2
    c = float(np.median(ce(logits(XA), Y)))
    m = METHODS.build("rwp", threat="linf:0.1", gamma=gamma, c_min=c, rwp_steps=steps, steps=1)
    w0 = torch.tensor(W0)
    b, xa = torch.tensor(B0), t(XA, torch.float64)
    v = torch.zeros_like(w0)
    for _ in range(steps):
        w = (w0 + v).requires_grad_(True)
        losses = torch.nn.functional.cross_entropy(xa @ w.T + b, torch.tensor(Y), reduction="none")
        keep = losses.detach() < c
        (g,) = torch.autograd.grad((losses * keep).sum() / 4, w)
        v = v + gamma * w0.norm() * g / g.norm()  # a step of the radius, then the projection
        v = v * min(1.0, float(gamma * w0.norm() / v.norm()))
    with fixed_adversarial(m.base, t(XA)):
        out = m.compute_loss(linear(), BATCH, CTX)
    assert_loss_close(out, _ce64(w0 + v, b, xa))


# ----------------------------------------------------------------------------- reweighting


def test_done_weights_and_running_normalizer():
    tau = 0.5
    losses = ce(logits(XA), Y)
    m1 = METHODS.build("done", threat="linf:0.1", tau=tau, rho=1.0, steps=1)
    w = 4 * np.exp(losses / tau) / np.exp(losses / tau).sum()
    assert_loss_close(run(m1, linear()), np.mean(w * losses))
    # rho = 0.5: the normaliser is a running mean of mean_batch exp(l / tau) across steps
    m = METHODS.build("done", threat="linf:0.1", tau=tau, rho=0.5, steps=1)
    model = linear()
    run(m, model)
    m.after_optimizer_step(model)
    xa2 = X - DELTA
    l2 = ce(logits(xa2), Y)
    u = 0.5 * np.mean(np.exp(losses / tau)) + 0.5 * np.mean(np.exp(l2 / tau))
    assert_loss_close(run(m, model, x_adv=xa2), np.mean(np.exp(l2 / tau) / u * l2))


def hr_primal(losses, alpha, r):
    """The HR worst case solved as the primal problem by SLSQP (independent of the dual)."""
    from scipy.optimize import minimize

    n = len(losses)
    lt = np.append(losses, losses.max())
    alpha = max(alpha, 1e-9)  # q > 0 keeps the KL finite; alpha = 0 is its limit

    def unpack(v):
        return v[: n + 1], v[n + 1 :]

    cons = [
        {"type": "eq", "fun": lambda v: unpack(v)[0].sum() - 1},
        {"type": "eq", "fun": lambda v: unpack(v)[1].sum() - 1},
        {
            "type": "ineq",
            "fun": lambda v: r - (unpack(v)[1] * np.log(unpack(v)[1] / unpack(v)[0])).sum(),
        },
        {"type": "ineq", "fun": lambda v: alpha - unpack(v)[1][n]},
    ]
    bounds = [(1e-10, 1)] * (n + 1) + [(1e-10, 1 / n)] * n + [(1e-10, 1)]
    v0 = np.concatenate([np.full(n + 1, 1 / (n + 1)), np.full(n, (1 - alpha) / n), [alpha]])
    res = minimize(lambda v: -(unpack(v)[0] @ lt), v0, bounds=bounds, constraints=cons,
                   method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})  # fmt: skip
    return -res.fun


@pytest.mark.parametrize("alpha,r", [(0.1, 0.2), (0.0, 0.5), (0.2, 0.0)])
def test_hr_matches_the_primal_worst_case(alpha, r):
    m = METHODS.build("hr", threat="linf:0.1", alpha=alpha, r=r, steps=1)
    out = run(m, linear())
    assert float(out.loss.detach()) == pytest.approx(
        hr_primal(ce(logits(XA), Y), alpha, r), rel=1e-4
    )


def test_dafa_class_weights_radius_and_update():
    m = METHODS.build("dafa", threat="linf:0.1", lam=0.5, warmup_epochs=1, steps=1)
    model = linear()
    losses, pa = ce(logits(XA), Y), softmax(logits(XA))
    assert_loss_close(run(m, model), np.mean(losses))  # W = 1 before the update
    m.after_optimizer_step(model)  # statistics of the (last) warm-up epoch
    sums = np.zeros((3, 3))
    for i, c in enumerate(Y):
        sums[c] += pa[i]
    assert np.allclose(m.prob_sums.numpy(), sums, atol=1e-6)
    assert m.counts.tolist() == [1, 2, 1]
    m.on_epoch_end(None, 0)
    sim = sums / np.array([1, 2, 1])[:, None]
    np.fill_diagonal(sim, 0)
    weights = 1 + 0.5 * (sim.sum(1) - sim.sum(0))
    assert np.allclose(m.class_weights.numpy(), weights, atol=1e-6)
    assert m.class_weights.sum().item() == pytest.approx(3.0)
    assert_loss_close(run(m, model), np.mean(weights[Y] * losses))


def test_sovr_switches_the_smallest_margins_to_one_vs_rest():
    m = METHODS.build("sovr", threat="linf:0.1", fraction=0.5, steps=1)
    za = logits(XA)
    other = za.copy()
    other[np.arange(4), Y] = -np.inf
    margin = za[np.arange(4), Y] - other.max(1)
    important = np.argsort(margin)[:2]
    sign = 1 - 2 * onehot(Y)
    ovr = np.log1p(np.exp(sign * za)).sum(1)
    per = ce(za, Y)
    per[important] = ovr[important]
    assert_loss_close(run(m, linear()), per.mean())


# ----------------------------------------------------------------------------- mixing


def test_iat():
    m = METHODS.build("iat", threat="linf:0.1", steps=1)
    draws = iter([(0.3, torch.tensor([1, 0, 3, 2]), 0), (0.6, torch.tensor([3, 2, 1, 0]), 0)])
    m.draw = lambda model, n, device: next(draws)

    def mix(x, lam, perm):
        z = logits(lam * x + (1 - lam) * x[perm])
        return np.mean(lam * ce(z, Y) + (1 - lam) * ce(z, Y[perm]))

    expected = 0.5 * mix(X, 0.3, [1, 0, 3, 2]) + 0.5 * mix(XA, 0.6, [3, 2, 1, 0])
    assert_loss_close(run(m, linear()), expected)


def test_iat_manifold_mixes_the_hidden_state():
    m = METHODS.build("iat", threat="linf:0.1", manifold=True, steps=1)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 3))
    w1, b1 = model[0].weight.detach().double().numpy(), model[0].bias.detach().double().numpy()
    w2, b2 = model[2].weight.detach().double().numpy(), model[2].bias.detach().double().numpy()
    perm = [2, 3, 0, 1]
    draws = iter([(0.25, torch.tensor(perm), 2), (0.5, torch.tensor(perm), 0)])
    m.draw = lambda model, n, device: next(draws)
    h = np.maximum(X @ w1.T + b1, 0)
    z1 = (0.25 * h + 0.75 * h[perm]) @ w2.T + b2
    z2 = np.maximum((0.5 * XA + 0.5 * XA[perm]) @ w1.T + b1, 0) @ w2.T + b2
    clean = np.mean(0.25 * ce(z1, Y) + 0.75 * ce(z1, Y[perm]))
    adv = np.mean(0.5 * ce(z2, Y) + 0.5 * ce(z2, Y[perm]))
    assert_loss_close(run(m, model), 0.5 * clean + 0.5 * adv)
    from robustlab.training.methods.mixing import mixing_points

    assert mixing_points(model) == [0, 2]


def test_avmixup():
    m = METHODS.build("avmixup", threat="linf:0.1", gamma=2.0, lam1=1.0, lam2=0.1, steps=1)
    a = np.array([0.1, 0.5, 0.9, 0.3])
    m.draw = lambda n, device: t(a)
    vertex = np.clip(X + 2.0 * DELTA, 0, 1)
    z = logits(a[:, None] * X + (1 - a[:, None]) * vertex)

    def phi(lam):
        return lam * onehot(Y) + (1 - lam) / 2 * (1 - onehot(Y))

    target = a[:, None] * phi(1.0) + (1 - a[:, None]) * phi(0.1)
    assert_loss_close(run(m, linear()), np.mean(-(target * log_softmax(z)).sum(1)))


# ----------------------------------------------------------------------------- teachers and peers


@pytest.mark.parametrize("at_end", [False, True])
def test_adr_soft_target_from_ema_teacher(at_end):
    m = METHODS.build("adr", threat="linf:0.1", steps=1, decay=0.9)
    model = linear()
    m.attach(model)
    wt = W0 + 0.3
    with torch.no_grad():
        m.teacher.weight.copy_(t(wt))
    tau, lam = (1.5, 0.5) if at_end else (2.5, 0.7)
    ctx = StepContext(0, 10 if at_end else 0, 1, 10)
    target = lam * onehot(Y) + (1 - lam) * softmax(logits(X, wt) / tau)
    assert_loss_close(run(m, model, ctx=ctx), np.mean(-(target * log_softmax(logits(XA))).sum(1)))
    m.after_optimizer_step(model)
    assert np.allclose(m.teacher.weight.numpy(), 0.9 * wt + 0.1 * W0, atol=1e-6)


def test_mtard_weights_and_loss():
    wa, wn = W0[::-1].copy(), W0 * 0.5
    m = METHODS.build(
        "mtard", threat="linf:0.1", robust_teacher=linear(wa), clean_teacher=linear(wn),
        weight_lr=0.1, steps=1,
    )  # fmt: skip
    model = linear()

    def parts(w):
        adv = kl(softmax(logits(XA, wa)), softmax(logits(XA, w))).mean()
        nat = kl(softmax(logits(X, wn)), softmax(logits(X, w))).mean()
        return nat, adv

    nat1, adv1 = parts(W0)
    assert_loss_close(run(m, model), 0.5 * adv1 + 0.5 * nat1)  # first step: relative losses 1, w_nat 0.5
    m.after_optimizer_step(model)
    w2 = 0.6 * W0  # (a constant shift of W would leave every softmax, so both KLs, unchanged)
    with torch.no_grad():
        model.weight.copy_(t(w2))
    nat2, adv2 = parts(w2)
    rn, ra = nat2 / nat1, adv2 / adv1
    w_nat = 0.5 - 0.1 * (0.5 - rn / (rn + ra))
    assert abs(w_nat - 0.5) > 0.01
    assert_loss_close(run(m, model), (1 - w_nat) * adv2 + w_nat * nat2)


def test_mutual_at():
    m = METHODS.build("mutual-at", threat="linf:0.1", peers=1, alpha=0.3, steps=1)
    model = linear()
    m.attach(model)
    wp = -W0
    with torch.no_grad():
        m.peer_models[0].weight.copy_(t(wp))
        m.peer_models[0].bias.copy_(t(B0))
    xb = X - DELTA
    points = {id(model): t(XA), id(m.peer_models[0]): t(xb)}
    ws = [W0, wp]
    total = 0.0
    for i in range(2):
        li = 0.0
        for x in (XA, xb):
            zi = logits(x, ws[i])
            zo = logits(x, ws[1 - i])
            li += 0.7 * ce(zi, Y).mean() + 0.3 * kl(softmax(zo), softmax(zi)).mean()
        total += li / 2
    with fixed_adversarial(m, lambda mod, batch, ctx: points[id(mod)]):
        out = m.compute_loss(model, BATCH, CTX)
    assert_loss_close(out, total)


def test_fomo_consistency_with_stable_model():
    m = METHODS.build("fomo", threat="linf:0.1", lam=2.0, steps=1)
    model = linear()
    m.attach(model)
    ws = W0 * 0.8
    with torch.no_grad():
        m.teacher.weight.copy_(t(ws))
    za = logits(XA)
    expected = ce(za, Y).mean() + 2.0 * kl(softmax(logits(XA, ws)), softmax(za)).mean()
    assert_loss_close(run(m, model), expected)


def test_fomo_forgets_the_requested_fraction_of_the_last_layer():
    from robustlab.training.methods.forgetting import forget

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 40))
    first = model[0].weight.detach().clone()
    last_w, last_b = model[2].weight.detach().clone(), model[2].bias.detach().clone()
    n = forget(model, layers=1, fraction=0.25)
    changed = int((model[2].weight != last_w).sum()) + int((model[2].bias != last_b).sum())
    assert torch.equal(model[0].weight, first)  # earlier layers untouched
    assert changed == n  # every redrawn entry differs from the old one (probability 1)
    assert 0.2 < n / (last_w.numel() + last_b.numel()) < 0.3
    assert forget(model, layers=1, fraction=0.0) == 0


# ----------------------------------------------------------------------------- BETA, VAT


def test_beta_at_loss_is_ce_at_the_best_targeted_point():
    m = METHODS.build("beta-at", threat="linf:0.1", steps=1)
    assert_loss_close(run(m, linear()), ce(logits(XA), Y).mean())


def test_vat_semi_supervised():
    m = METHODS.build("vat", threat="l2:0.5", alpha=2.0)
    y = np.array([0, -1, 2, -1])
    batch = Batch(t(X), torch.tensor(y), torch.arange(4))
    z, za = logits(X), logits(XA)
    expected = ce(z[[0, 2]], y[[0, 2]]).mean() + 2.0 * kl(softmax(z), softmax(za)).mean()
    assert_loss_close(run(m, linear(), batch=batch), expected)
    all_unlabelled = Batch(t(X), torch.full((4,), -1), torch.arange(4))
    assert_loss_close(run(m, linear(), batch=all_unlabelled), 2.0 * kl(softmax(z), softmax(za)).mean())


# ----------------------------------------------------------------------------- auxiliary heads


@pytest.mark.parametrize("variant", ["ce", "kl"])
def test_dial(variant):
    m = METHODS.build("dial", threat="linf:0.1", lam=0.7, r=0.4, variant=variant, hidden=4, steps=1)
    model = linear()
    torch.manual_seed(3)
    m.attach(model)
    d1, d2 = m.head[0], m.head[2]
    w1, b1 = d1.weight.detach().double().numpy(), d1.bias.detach().double().numpy()
    w2, b2 = d2.weight.detach().double().numpy(), d2.bias.detach().double().numpy()

    def domain(x, label):  # the features of a linear model are its input
        return ce(np.maximum(x @ w1.T + b1, 0) @ w2.T + b2, np.full(4, label)).mean()

    z, za = logits(X), logits(XA)
    robust = ce(za, Y).mean() if variant == "ce" else kl(softmax(z), softmax(za)).mean()
    expected = ce(z, Y).mean() + 0.7 * robust + 0.4 * (domain(X, 0) + domain(XA, 1))
    assert_loss_close(run(m, model), expected)


def test_gradient_reversal():
    from robustlab.training.methods.shared import grad_reverse

    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x, 2.0) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [-2.0, -4.0, -6.0]


def test_rotation_auxiliary_task():
    m = METHODS.build("rotation", threat="linf:0.1", lam=0.5, steps=1)
    w = np.arange(12, dtype=float).reshape(3, 4) / 10 - 0.5
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(t(w))
        model[1].bias.zero_()
    m.attach(model)
    hw = m.head.weight.detach().double().numpy()
    hb = m.head.bias.detach().double().numpy()
    x = X[:, :2].repeat(2, 1).reshape(4, 1, 2, 2) * 0.9
    xa = np.clip(x + 0.05, 0, 1)
    batch = Batch(t(x), torch.tensor(Y), torch.arange(4))
    rot = np.concatenate([np.rot90(xa, k, axes=(2, 3)) for k in range(4)]).reshape(16, 4)
    labels = np.repeat(np.arange(4), 4)
    expected = ce(xa.reshape(4, 4) @ w.T, Y).mean() + 0.5 * ce(rot @ hw.T + hb, labels).mean()
    assert_loss_close(run(m, model, x_adv=xa, batch=batch), expected)


def test_seam_restores_the_attack():
    m = METHODS.build("trades", threat="linf:0.1", steps=1)
    with fixed_adversarial(m, t(XA)):
        with fixed_adversarial(m, t(X)):
            assert torch.equal(m.adversarial(None, BATCH, CTX), t(X))
        assert torch.equal(m.adversarial(None, BATCH, CTX), t(XA))
    assert "adversarial" not in vars(m)
    assert math.isfinite(float(m.compute_loss(linear(), BATCH, CTX).loss.detach()))
