"""Soundness first: IBP, CROWN-IBP and CROWN lower bounds never exceed a margin that any point of
the ball reaches (clean point, random points, projected-gradient points aimed at each margin);
then exactness on linear networks, the IBP/CROWN ordering, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from test_certify_nets import random_net
from torch import nn

from robustlab.attacks import PGD
from robustlab.certify import (
    BOUND_METHODS,
    compute_bounds,
    crown_ibp_bounds,
    ibp_bounds,
    interval_bounds,
    margin_bounds,
    margin_spec,
    verified,
)
from robustlab.errors import RobustlabError
from robustlab.models import build_model
from robustlab.threat import Threat

TOL = 1e-4


def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = model(x)
    return z.gather(1, y[:, None]) - z


def attack_each_margin(model, x, y, threat: Threat, k: int, steps: int = 15) -> torch.Tensor:
    """Points of the ball that minimise each margin z_y - z_j separately: (N, K, *shape)."""
    n = x.shape[0]
    xs = x.repeat_interleave(k, 0)
    ys = y.repeat_interleave(k, 0)
    js = torch.arange(k).repeat(n)
    adv = threat.random_init(xs)
    step = 2.5 * threat.eps / steps
    for _ in range(steps):
        adv.requires_grad_(True)
        z = model(adv)
        m = z.gather(1, ys[:, None]).squeeze(1) - z.gather(1, js[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(m.sum(), adv)
        adv = threat.project(adv.detach() - step * threat.steepest_direction(grad), xs)
    return adv.detach().reshape(n, k, *x.shape[1:])


def check_sound(model, x, y, threat, bounds):
    """bounds (N, K) <= margins at the clean point, random points and per-margin attacks."""
    k = bounds.shape[1]
    with torch.no_grad():
        assert (bounds <= margins(model, x, y) + TOL).all()
        for _ in range(4):
            xr = threat.random_init(x)
            assert (bounds <= margins(model, xr, y) + TOL).all()
    adv = attack_each_margin(model, x, y, threat, k)
    with torch.no_grad():
        for j in range(k):
            m = margins(model, adv[:, j], y)
            assert (bounds[:, j] <= m[:, j] + TOL).all(), (bounds[:, j], m[:, j])


THREATS = ["linf:0.01", "linf:0.05", "linf:0.2", "l2:0.1", "l2:0.5", "l2:2"]


@pytest.mark.parametrize("seed", range(150))
def test_bounds_are_sound_on_random_networks(seed):
    torch.manual_seed(seed)
    model, shape = random_net(seed)
    threat = Threat.parse(THREATS[seed % len(THREATS)])
    x = torch.rand(8, *shape)
    with torch.no_grad():
        k = model(x).shape[1]
    y = torch.randint(k, (8,))
    results = {}
    for method in BOUND_METHODS:
        for tighten in (False, True):
            with torch.no_grad():
                b = compute_bounds(model, x, threat, y=y, method=method, tighten=tighten)
            assert b.shape == (8, k)
            assert torch.all(b.gather(1, y[:, None]) == 0)
            check_sound(model, x, y, threat, b)
            results[method, tighten] = b
    # the reported CROWN bounds are never looser than IBP's, nor full CROWN than CROWN-IBP's IBP
    assert (results["crown", True] >= results["ibp", True] - 1e-5).all()
    assert (results["crown-ibp", True] >= results["ibp", True] - 1e-5).all()


def test_crown_is_tighter_than_ibp_on_average():
    gaps = []
    for seed in range(20):
        model, shape = random_net(seed, residual=False)
        x = torch.rand(4, *shape)
        with torch.no_grad():
            y = model(x).argmax(1)
            ibp = margin_bounds(model, x, y, "linf:0.05", method="ibp")
            crown = margin_bounds(model, x, y, "linf:0.05", method="crown", tighten=False)
        gaps.append((crown - ibp).mean())
    assert torch.stack(gaps).mean() > 0


def test_raw_crown_can_be_looser_than_ibp_and_the_reported_bound_is_not():
    """relu(z) on z in [-1, 2]: CROWN's adaptive lower line z gives -1, IBP gives 0."""
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).eval()
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[0].bias.fill_(-1.0)
        model[2].weight.fill_(1.0)
        model[2].bias.fill_(0.0)
    x = torch.tensor([[0.5]])
    spec = torch.ones(1, 1)
    with torch.no_grad():
        assert float(ibp_bounds(model, x, "linf:0.5", spec)) == pytest.approx(0.0)
        assert float(crown_ibp_bounds(model, x, "linf:0.5", spec)) == pytest.approx(-1.0)
        assert float(compute_bounds(model, x, "linf:0.5", spec, method="crown-ibp")) == 0.0
        assert float(crown_ibp_bounds(model, x, "linf:0.5", spec, lower_slope="zero")) == 0.0


@pytest.mark.parametrize("conv,shape", [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (4, 9, 9)),
    (nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (4, 7, 7)),
    (nn.Conv2d(1, 16, 4, stride=2), (1, 28, 28)),
    (nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 0)), (2, 6, 7)),
    (nn.Linear(5, 7), (5,)),
])
def test_first_backward_step_of_unit_rows_is_the_transpose(conv, shape):
    from robustlab.certify.crown import unit_rows_through
    from robustlab.certify.graph import compile_model

    graph = compile_model(nn.Sequential(conv, nn.Flatten()), shape)
    op, out = graph.nodes[1].op, graph.nodes[1].shape
    n = math.prod(out)
    ids = torch.randint(n, (3, 5))
    coef, bias = unit_rows_through(op, ids, shape)
    unit = torch.zeros(3, 5, n).scatter_(2, ids[..., None], 1.0).view(3, 5, *out)
    with torch.no_grad():
        torch.testing.assert_close(coef, op.transpose(unit))
        torch.testing.assert_close(bias, op.bias_term(unit))


def exact_linear_lower(model, x, threat: Threat, spec):
    """min of spec @ f over the ball ∩ box for an affine f, in closed form from its Jacobian."""
    n = x.shape[0]
    jac = torch.autograd.functional.jacobian(lambda v: model(v).sum(0), x)
    jac = jac.movedim(1, 0).reshape(n, -1, x[0].numel())  # (N, K, D)
    a = spec @ jac  # (N, S, D)
    base = (spec @ model(x).unsqueeze(-1)).squeeze(-1)
    if threat.norm == "linf":
        lo = (x - threat.eps).clamp(0, 1).flatten(1)
        hi = (x + threat.eps).clamp(0, 1).flatten(1)
        best = torch.where(a > 0, lo[:, None], hi[:, None])
        return base + (a * (best - x.flatten(1)[:, None])).sum(-1)
    return base - threat.eps * a.norm(dim=-1)  # the ball inside the box


def linear_net(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A random network without ReLU: Normalize, strided/dilated/grouped convs, BN, pooling,
    residual additions with and without a shortcut, Flatten, Linear."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-1, 2)
    from robustlab.models.layers import Normalize, Residual

    model = nn.Sequential(
        Normalize([0.3, 0.5], [0.5, 0.2]), nn.Conv2d(2, 4, 3, stride=2, padding=1), bn,
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2),
                               nn.AvgPool2d(3, stride=1, padding=1))),
        nn.AvgPool2d(2),
        Residual(nn.Conv2d(4, 2, 1), shortcut=nn.Conv2d(4, 2, 3, padding=1)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 5),
    ).eval()
    return model, (2, 9, 9)


@pytest.mark.parametrize("method", BOUND_METHODS)
@pytest.mark.parametrize("threat", ["linf:0.1", "linf:0.6", "l2:0.1"])
def test_exact_on_networks_without_relu(method, threat):
    model, shape = linear_net(0)
    t = Threat.parse(threat)
    x = torch.rand(4, *shape) * 0.4 + 0.3 if t.norm == "l2" else torch.rand(4, *shape)
    spec = torch.randn(4, 3, 5)
    b = compute_bounds(model, x, t, spec, method=method, tighten=False)
    torch.testing.assert_close(b, exact_linear_lower(model, x, t, spec), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", BOUND_METHODS)
def test_exact_on_a_single_linear_layer_and_the_bound_is_attained(method):
    layer = nn.Linear(6, 4)
    x = torch.rand(3, 6) * 0.4 + 0.3
    y = torch.tensor([0, 2, 3])
    spec = margin_spec(y, 4)
    for threat in (Threat("linf", 0.1), Threat("l2", 0.2)):
        b = compute_bounds(layer, x, threat, y=y, method=method)
        torch.testing.assert_close(b, exact_linear_lower(layer, x, threat, spec), atol=1e-5,
                                   rtol=1e-5)
    # the Linf minimiser is a corner of the box: the bound is reached there
    a = spec @ layer.weight
    corner = torch.where(a > 0, x[:, None] - 0.1, x[:, None] + 0.1)  # (N, K, D)
    with torch.no_grad():
        reached = (spec * layer(corner)).sum(-1)
    b = compute_bounds(layer, x, "linf:0.1", y=y, method=method)
    torch.testing.assert_close(b, reached, atol=1e-5, rtol=1e-5)


def test_l2_ibp_bounds_the_first_layer_on_the_ball():
    """For an L2 ball IBP bounds the first layer by W x +- eps ||W_i||, not by the box."""
    model = nn.Sequential(nn.Linear(50, 3)).eval()
    x = torch.full((1, 50), 0.5)
    lo, hi = interval_bounds(model, x, "l2:0.1")
    center = model(x)
    rad = 0.1 * model[0].weight.norm(dim=1)
    torch.testing.assert_close(hi - center, rad.expand_as(hi), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(center - lo, rad.expand_as(lo), atol=1e-5, rtol=1e-5)


def test_ibp_interval_contains_the_outputs():
    model, shape = random_net(3)
    x = torch.rand(5, *shape)
    lo, hi = interval_bounds(model, x, "linf:0.1")
    for _ in range(10):
        z = model(Threat.parse("linf:0.1").random_init(x))
        assert (lo <= z + TOL).all() and (z <= hi + TOL).all()


def test_upper_bounds_by_negation_and_identity_spec():
    model, shape = random_net(7)
    x = torch.rand(3, *shape)
    lo, hi = interval_bounds(model, x, "linf:0.05")
    k = lo.shape[1]
    torch.testing.assert_close(ibp_bounds(model, x, "linf:0.05"), lo)
    upper = -compute_bounds(model, x, "linf:0.05", -torch.eye(k), method="crown")
    assert (upper <= hi + 1e-5).all()
    for _ in range(5):
        z = model(Threat.parse("linf:0.05").random_init(x))
        assert (z <= upper + TOL).all()


def test_certified_points_are_never_broken_by_pgd_with_restarts():
    torch.manual_seed(0)
    count = 0
    for seed in range(12):
        model, shape = random_net(seed, residual=seed % 2 == 0)
        x = torch.rand(16, *shape)
        with torch.no_grad():
            y = model(x).argmax(1)
            eps = 0.02
            ok = verified(margin_bounds(model, x, y, f"linf:{eps}", method="crown"), y)
        if ok.any():
            count += int(ok.sum())
            attack = PGD(f"linf:{eps}", steps=20, restarts=3, loss="margin", seed=seed)
            res = attack.run(model, x[ok], y[ok])
            assert not res.success.any()
    assert count > 20


def test_bounds_on_library_models():
    torch.manual_seed(0)
    model = build_model("preact-resnet18", (3, 8, 8), 10, width=2).eval()
    x = torch.rand(2, 3, 8, 8)
    y = torch.tensor([1, 2])
    for method in BOUND_METHODS:
        with torch.no_grad():
            b = margin_bounds(model, x, y, "linf:0.002", method=method)
        check_sound(model, x, y, Threat.parse("linf:0.002"), b)
    small = build_model("cnn-small", (1, 28, 28), 10).eval()
    xs = torch.rand(3, 1, 28, 28)
    ys = torch.tensor([0, 1, 2])
    with torch.no_grad():
        ib = margin_bounds(small, xs, ys, "linf:0.01", method="ibp")
        cb = margin_bounds(small, xs, ys, "linf:0.01", method="crown")
    check_sound(small, xs, ys, Threat.parse("linf:0.01"), cb)
    assert (cb >= ib - 1e-5).all() and (cb - ib).mean() > 0


def test_crown_chunking_does_not_change_the_bounds():
    model, shape = random_net(11, residual=False, batchnorm=False)
    x = torch.rand(4, *shape)
    y = torch.zeros(4, dtype=torch.long)
    big = margin_bounds(model, x, y, "linf:0.1", method="crown")
    tiny = margin_bounds(model, x, y, "linf:0.1", method="crown", max_elements=1)
    torch.testing.assert_close(big, tiny, atol=1e-5, rtol=1e-5)


def test_bounds_in_training_mode_are_differentiable_and_sound_for_the_batch_statistics():
    model, shape = random_net(2, residual=True)
    model.train()
    x = torch.rand(8, *shape)
    y = torch.zeros(8, dtype=torch.long)
    b = margin_bounds(model, x, y, "linf:0.01", method="crown-ibp")
    assert (b <= margins(model, x, y) + TOL).all()
    b.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_bad_input_is_one_sentence():
    model, shape = random_net(0)
    x = torch.rand(2, *shape)
    with pytest.raises(RobustlabError, match="linf, l2"):
        compute_bounds(model, x, "l1:1.0")
    with pytest.raises(RobustlabError, match="Unknown bound method"):
        compute_bounds(model, x, "linf:0.1", method="deeppoly")
    with pytest.raises(RobustlabError, match=r"\[0, 1\]"):
        compute_bounds(model, x + 2, "linf:0.1")
    with pytest.raises(RobustlabError, match="specification C"):
        compute_bounds(model, x, "linf:0.1", torch.ones(3, 2, 99))
    with pytest.raises(RobustlabError, match="eps"):
        compute_bounds(model, x, "linf:-1")
    with pytest.raises(RobustlabError, match="lower slope"):
        compute_bounds(model, x, "linf:0.1", method="crown", lower_slope="best")
    with pytest.raises(RobustlabError, match="labels"):
        margin_bounds(model, x, torch.tensor([0, 99]), "linf:0.1")


def test_zero_radius_gives_the_exact_margins():
    model, shape = random_net(4)
    x = torch.rand(3, *shape)
    y = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        for method in BOUND_METHODS:
            b = margin_bounds(model, x, y, "linf:0", method=method)
            torch.testing.assert_close(b, margins(model, x, y), atol=1e-5, rtol=1e-5)
            assert math.isfinite(float(b.sum()))


def refinement_net() -> nn.Module:
    """x in [0, 1]^2 (x = (0.5, 0.5), Linf 0.5); z1 = (x1 + x2 - 1, x1 - x2) in [-1, 1]^2,
    h = relu(z1); z2 = h1 + h2 - 1.75; out = relu(z2).

    By hand: relu's triangle upper line on [-1, 1] is 0.5 z + 0.5, so back-substitution gives
    z2 <= 0.5 (x1 + x2 - 1) + 0.5 (x1 - x2) + 1 - 1.75 = x1 - 1.25 <= -0.25, while IBP gives
    z2 <= 1 + 1 - 1.75 = 0.25. With CROWN's refined z2 in [-1.75, -0.25] the second ReLU is
    stably off and out = 0 exactly (true: h1 + h2 <= 1, so out = 0 everywhere). CROWN-IBP keeps
    IBP's [-1.75, 0.25]: relu(z2) <= (z2 + 1.75) / 8, whose maximum over the input is
    (x1 - 1.25 + 1.75) / 8 at x1 = 1: 0.1875. IBP: 0.25.
    """
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1), nn.ReLU(),
                          nn.Linear(1, 1)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        model[0].bias.copy_(torch.tensor([-1.0, 0.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
        model[2].bias.fill_(-1.75)
        model[4].weight.fill_(1.0)
        model[4].bias.fill_(0.0)
    return model


def test_crown_refines_intermediate_bounds_by_back_substitution():
    """Full CROWN's intermediate (pre-activation) bounds come from backward passes, not IBP: on
    a hand-computed net the refined bound makes a ReLU stable and the output bound exact."""
    from robustlab.certify.crown import crown, crown_ibp
    from robustlab.certify.propagation import check_spec, setup

    model = refinement_net()
    x = torch.full((1, 2), 0.5)
    upper = -torch.ones(1, 1)  # bounds of -out: minus the upper bound of out
    results = {}
    for name, fn in (("crown", crown), ("crown-ibp", crown_ibp)):
        state = setup(model, x, "linf:0.5")
        with torch.no_grad():
            results[name] = float(fn(state, check_spec(upper, state)))
        z2 = state.intervals[3]  # node 3: the second Linear's output
        results[name + " z2"] = (float(z2[0]), float(z2[1]))
    assert results["crown z2"] == pytest.approx((-1.75, -0.25), abs=1e-6)
    assert results["crown-ibp z2"] == pytest.approx((-1.75, 0.25), abs=1e-6)
    assert -results["crown"] == pytest.approx(0.0, abs=1e-6)
    assert -results["crown-ibp"] == pytest.approx(0.1875, abs=1e-6)
    with torch.no_grad():
        assert -float(ibp_bounds(model, x, "linf:0.5", upper)) == pytest.approx(0.25, abs=1e-6)
        for method, expected in (("crown", 0.0), ("crown-ibp", 0.1875), ("ibp", 0.25)):
            got = -float(compute_bounds(model, x, "linf:0.5", upper, method=method))
            assert got == pytest.approx(expected, abs=1e-6), method
