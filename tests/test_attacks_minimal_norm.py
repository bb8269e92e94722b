"""Minimal-norm attacks (FAB, FAB-T, DeepFool, C&W L2, FMN) and the norm -> curve helpers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.attacks import ATTACKS, FAB, FABT, FMN, PGD, CarliniWagnerL2, DeepFool
from robustlab.attacks.base import Attack
from robustlab.attacks.deepfool import rho_adv
from robustlab.attacks.geometry import perturbation_norms, project_ball, project_hyperplane
from robustlab.data import load_digits
from robustlab.errors import RobustlabError
from robustlab.evaluation.minimal_norm import (
    median_norm,
    result_norms,
    robust_accuracy_curve,
)

DUAL = {"l2": 2.0, "linf": 1.0, "l1": math.inf}


def affine_model(d: int = 20, k: int = 5, seed: int = 0, disjoint: bool = False, scale: float = 3.0, spread: float = 1.0):
    """A K-class affine classifier on D inputs. ``disjoint``: rows with disjoint supports of equal
    norms, so that every ||w_y - w_j|| is the same and the closest boundary is the runner-up's."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        if disjoint:
            w = torch.zeros(k, d)
            for c in range(k):
                w[c, c * (d // k) : (c + 1) * (d // k)] = scale
        else:
            w = scale * torch.randn(k, d, generator=g)
        lin.weight.copy_(w)
        lin.bias.copy_(-0.5 * w.sum(1) + spread * torch.randn(k, generator=g))
    return nn.Sequential(nn.Flatten(), lin)


def linear_data(model, n: int = 16, d: int = 20, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 0.015 * torch.randn(n, d, generator=g)
    y = model(x).argmax(1)
    return x, y


def exact_distance(model, x, y, norm: str, slack: float = 0.0):
    """min_j (z_y - z_j) / ||w_y - w_j||_dual: the exact Lp distance to the decision boundary
    (with ``slack``: to the level set ``z_y - z_j = -slack`` just past it)."""
    lin = model[1]
    z = lin(x).detach()
    w = lin.weight.detach()
    gaps = z.gather(1, y[:, None]) - z + slack
    dw = w[y][:, None, :] - w[None]
    dist = gaps / torch.linalg.vector_norm(dw, ord=DUAL[norm], dim=2).clamp_min(1e-12)
    dist[torch.arange(len(x)), y] = math.inf
    return dist.min(1).values


CASES = [
    ("fab", "l2", lambda: FAB(norm="l2", steps=60)),
    ("fab", "linf", lambda: FAB(norm="linf", steps=60)),
    ("fab", "l1", lambda: FAB(norm="l1", steps=60)),
    ("fab-t", "l2", lambda: FABT(norm="l2", steps=40, n_target_classes=4)),
    ("deepfool", "l2", lambda: DeepFool(norm="l2", overshoot=0.002)),
    ("deepfool", "linf", lambda: DeepFool(norm="linf", overshoot=0.002)),
    # C&W's Adam (lr 0.01 in tanh space) resolves the boundary to ~0.001: use distances ~0.1-0.3
    (
        "cw",
        "l2",
        lambda: CarliniWagnerL2(steps=200, binary_search_steps=6, initial_const=0.1),
        {"scale": 1.0, "spread": 3.0},
    ),
    ("fmn", "l2", lambda: FMN(norm="l2", steps=150)),
    ("fmn", "l1", lambda: FMN(norm="l1", steps=150)),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_minimal_norm_equals_exact_boundary_distance(case):
    name, norm, make, *model_kwargs = case
    model = affine_model(**(model_kwargs[0] if model_kwargs else {}))
    x, y = linear_data(model)
    exact = exact_distance(model, x, y, norm)
    # the closed-form minimiser stays far inside the box, so the box does not bind
    assert float(exact.max()) < 0.35 and float((x - 0.5).abs().max()) < 0.1
    result = make().run(model, x, y)
    assert result.success.all()
    ratio = result.norms / exact
    # float32: a few 1e-4 of relative error on the smallest distances
    assert float(ratio.min()) >= 1 - 1e-3, "found a perturbation shorter than the exact distance"
    assert float(ratio.max()) <= 1.01


def test_fmn_linf_exact_when_closest_boundary_is_the_runner_up():
    # FMN follows the gradient of the margin to the largest other logit, so on a general affine
    # classifier it can stop on the boundary of a class that is not the Linf-closest one; with
    # equal ||w_y - w_j|| the runner-up's boundary is the closest and FMN reaches it.
    model = affine_model(disjoint=True)
    x, y = linear_data(model)
    exact = exact_distance(model, x, y, "linf")
    result = FMN(norm="linf", steps=150).run(model, x, y)
    assert result.success.all()
    ratio = result.norms / exact
    assert 1 - 1e-3 <= float(ratio.min()) and float(ratio.max()) <= 1.01


def test_deepfool_overshoot_scales_the_linear_step():
    model = affine_model()
    x, y = linear_data(model)
    # one step of |f| + 1e-4 (the authors' slack) along w, times 1 + overshoot (0.02)
    exact = exact_distance(model, x, y, "l2", slack=1e-4)
    result = DeepFool(norm="l2").run(model, x, y)
    torch.testing.assert_close(result.norms, 1.02 * exact, rtol=1e-3, atol=1e-6)
    expected = float((1.02 * exact / x.norm(dim=1)).mean())
    assert result.extras["rho_adv"] == pytest.approx(expected, rel=1e-3)
    assert rho_adv(result, x, "l2") == pytest.approx(expected, rel=1e-3)


# ----------------------------------------------------------------------------- invariants
@pytest.fixture(scope="module")
def digits_cnn():
    """A small CNN trained for a few Adam steps on scikit-learn's real 8x8 digits, and 12 test
    images: realistic minimal norms (~1 in L2) that every attack reaches within a small budget."""
    torch.manual_seed(0)
    train = load_digits("train", None, False, 600)
    test = load_digits("test", None, False, 12)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    return model, test.x, test.y


INVARIANT_ATTACKS = [
    lambda: FAB(norm="linf", steps=15, restarts=2, seed=0),
    lambda: FAB(norm="l1", steps=15, seed=0),
    lambda: FABT(norm="l2", steps=10, n_target_classes=2, seed=0),
    lambda: DeepFool(norm="linf", steps=20),
    lambda: CarliniWagnerL2(steps=50, binary_search_steps=3, initial_const=10.0, lr=0.1),
    lambda: FMN(norm="l0", steps=30),
    lambda: FMN(norm="l2", steps=100),
]


@pytest.mark.parametrize("make", INVARIANT_ATTACKS, ids=lambda m: repr(m()))
def test_box_success_and_determinism(make, digits_cnn):
    model, x, y = digits_cnn
    y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two clean errors: norm 0, counted as successes
    model.train()
    r1 = make().run(model, x, y)
    r2 = make().run(model, x, y)
    assert model.training  # the model's mode is restored
    assert (r1.x_adv >= 0).all() and (r1.x_adv <= 1).all()
    torch.testing.assert_close(r1.x_adv, r2.x_adv)  # seeded or deterministic
    with torch.no_grad():
        pred = model.eval()(r1.x_adv).argmax(1)
    model.train()
    assert torch.equal(r1.success, pred != y)  # success exactly when the prediction changed
    assert r1.success[:2].all() and (r1.norms[:2] == 0).all()
    assert r1.success[2:].float().mean() > 0.5
    found = r1.extras["minimal_norms"]
    assert torch.equal(torch.isfinite(found), r1.success)
    torch.testing.assert_close(found[r1.success], r1.norms[r1.success])


def test_fmn_radius_rule_reaches_the_boundary_where_the_paper_rule_stalls(digits_cnn):
    model, x, _ = digits_cnn
    y = model(x).argmax(1)
    ours = FMN(norm="l2", steps=100).run(model, x, y)
    paper = FMN(norm="l2", steps=100, paper_radius=True).run(model, x, y)
    assert ours.success.float().mean() > 0.9
    assert paper.success.float().mean() < ours.success.float().mean()


@pytest.mark.parametrize(
    "make",
    [
        lambda: FAB(norm="l2", steps=20, targeted=True),
        lambda: CarliniWagnerL2(
            steps=50, binary_search_steps=3, initial_const=10.0, lr=0.1, targeted=True
        ),
        lambda: FMN(norm="linf", steps=40, targeted=True),
    ],
    ids=["fab", "cw", "fmn"],
)
def test_targeted_hits_the_target(make, digits_cnn):
    model, x, _ = digits_cnn
    y = model(x).argmax(1)
    target = (y + 1) % 10
    result = make().run(model, x, y, target)
    pred = model(result.x_adv).argmax(1)
    assert result.success.float().mean() > 0.5
    assert torch.equal(result.success, pred == target)


def test_eps_bound_keeps_outputs_in_the_ball(digits_cnn):
    model, x, _ = digits_cnn
    y = model(x).argmax(1)
    free = FAB(norm="linf", steps=20).run(model, x, y)
    eps = float(free.norms[free.success].median())
    bounded = ATTACKS.build("fab", threat=f"linf:{eps}", steps=20).run(model, x, y)
    assert bounded.threat.contains(bounded.x_adv, x).all()
    torch.testing.assert_close(bounded.extras["minimal_norms"], free.extras["minimal_norms"])
    assert torch.equal(bounded.success, free.success & (free.norms <= eps * (1 + 1e-5)))
    # the curve from the bounded run's found norms covers radii beyond eps as well
    curve = robust_accuracy_curve(*result_norms(bounded), [eps, 10 * eps])
    assert float(curve[0]) == pytest.approx(bounded.robust_accuracy)


class _Scripted(Attack):
    """Restart r returns x + scale[r] * direction: a fixed candidate per restart."""

    name = "scripted"
    minimal_norm = True

    def __init__(self, scales):
        super().__init__(None, norm="l2", restarts=len(scales))
        self.scales = scales

    def perturb(self, model, x, y, target, generator):
        direction = torch.zeros_like(x)
        direction[:, 0] = 1.0
        return (x + self.scales[self._restart] * direction).clamp(0, 1)


def test_restarts_keep_the_smallest_successful_norm():
    # class 1 iff x_0 > 0.5: a perturbation of the first coordinate by s succeeds iff s > 0.5 - x_0
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        model[0].bias.copy_(torch.tensor([0.0, -0.5]))
    x = torch.tensor([[0.1, 0.5], [0.3, 0.5]])
    y = torch.zeros(2, dtype=torch.long)
    # restart 0 breaks both with 0.6, restart 1 (0.3) only the second, restart 2 (0.1) none
    result = _Scripted([0.6, 0.3, 0.1]).run(model, x, y)
    assert result.success.all()
    torch.testing.assert_close(result.norms, torch.tensor([0.6, 0.3]))


class _Ball(Attack):
    name = "ball"

    def perturb(self, model, x, y, target, generator):
        return x


def test_norm_and_threat_conventions():
    assert FAB().norm == "linf" and FAB(norm="inf").norm == "linf"
    assert FAB(threat="l2:1.5").norm == "l2" and FAB(threat="l2:1.5").threat.eps == 1.5
    with pytest.raises(RobustlabError, match="contradicts"):
        FAB(threat="l2:1", norm="linf")
    with pytest.raises(RobustlabError, match="supports the norms"):
        CarliniWagnerL2(norm="linf")
    with pytest.raises(RobustlabError, match="supports the norms"):
        FAB(norm="l0")
    with pytest.raises(RobustlabError):
        FAB(threat="l2:inf")
    with pytest.raises(RobustlabError, match="drop norm"):  # ball attacks take the threat's norm
        _Ball("linf:0.3", norm="l2")
    assert PGD("l2:0.5").norm == "l2"
    for name in ("fab", "fab-t", "deepfool", "cw", "fmn"):
        assert ATTACKS.get(name).minimal_norm


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_hyperplane_projection_with_box_is_feasible_and_minimal(norm):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(64, 10, generator=g)
    w = torch.randn(64, 10, generator=g)
    c = 0.3 * torch.randn(64, generator=g)
    delta = project_hyperplane(w, c, norm, point=p)
    reachable = (torch.where(w * c[:, None] > 0, 1 - p, p) * w.abs()).sum(1) >= c.abs()
    torch.testing.assert_close((w * delta).sum(1)[reachable], c[reachable], atol=1e-5, rtol=1e-5)
    assert ((p + delta) >= -1e-6).all() and ((p + delta) <= 1 + 1e-6).all()
    # no feasible random point on the hyperplane inside the box is shorter
    for _ in range(200):
        cand = delta + 0.05 * torch.randn(64, 10, generator=g)
        cand = (p + cand).clamp(0, 1) - p
        on_plane = ((w * cand).sum(1) - c).abs() < 1e-3
        shorter = perturbation_norms(cand, norm) < perturbation_norms(delta, norm) - 1e-3
        assert not (on_plane & shorter & reachable).any()


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_hyperplane_projection_with_box_equals_the_linear_program(norm):
    # min ||delta|| s.t. <w, delta> = c, 0 <= p + delta <= 1, solved exactly by scipy's HiGHS;
    # a third of the coordinates have w_i = 0 exactly
    from scipy.optimize import linprog

    g = torch.Generator().manual_seed(3)
    n, d = 12, 9
    p = torch.rand(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(n, d, generator=g, dtype=torch.float64) * (torch.rand(n, d, generator=g) > 0.33)
    c = 0.4 * torch.randn(n, generator=g, dtype=torch.float64)
    delta = project_hyperplane(w, c, norm, point=p)
    checked = 0
    for i in range(n):
        if norm == "linf":  # variables (delta, s): min s, |delta_j| <= s
            cost = [0.0] * d + [1.0]
            a_ub = [[(1.0 if j == k else 0.0) for k in range(d)] + [-1.0] for j in range(d)]
            a_ub += [[(-1.0 if j == k else 0.0) for k in range(d)] + [-1.0] for j in range(d)]
            a_eq = [w[i].tolist() + [0.0]]
            bounds = [(-p[i, j], 1 - p[i, j]) for j in range(d)] + [(0, None)]
        else:  # variables (u, v) with delta = u - v, u, v >= 0: min sum(u + v)
            cost = [1.0] * (2 * d)
            a_ub = None
            a_eq = [w[i].tolist() + (-w[i]).tolist()]
            bounds = [(0, 1 - p[i, j]) for j in range(d)] + [(0, p[i, j]) for j in range(d)]
        res = linprog(cost, A_ub=a_ub, b_ub=[0.0] * (2 * d) if a_ub else None, A_eq=a_eq,
                      b_eq=[float(c[i])], bounds=bounds, method="highs")  # fmt: skip
        if res.status == 2:  # infeasible: the box cannot reach the plane
            continue
        assert float(perturbation_norms(delta[i : i + 1], norm)) == pytest.approx(res.fun, abs=1e-9)
        assert float((w[i] * delta[i]).sum()) == pytest.approx(float(c[i]), abs=1e-9)
        checked += 1
    assert checked >= n // 2  # most planes are reachable: the comparison is not vacuous


def test_water_level_by_selection_equals_the_full_sort_on_many_coordinates():
    # MNIST-like box room (many 0 and 1), needs from zero to unreachable: the solution lies
    # within the selected breakpoints for some rows and past them (full sort) for others
    from robustlab.attacks import geometry

    g = torch.Generator().manual_seed(0)
    n, d = 60, 784
    t = torch.rand(n, d, generator=g, dtype=torch.float64)
    t = torch.where(t < 0.4, 0.0, torch.where(t > 0.8, 1.0, t))
    a = torch.rand(n, d, generator=g, dtype=torch.float64) * (torch.rand(n, d, generator=g) > 0.1)
    capacity = (a * t).sum(1)
    need = capacity * torch.linspace(0.0, 1.2, n, dtype=torch.float64)
    lam = geometry._water_level(a, t, need)
    ref = geometry._water_level_sorted(a, t, need)
    torch.testing.assert_close(lam, ref, rtol=1e-12, atol=0.0)
    reachable = need <= capacity
    assert torch.isinf(lam[~reachable]).all() and torch.isfinite(lam[reachable]).all()
    h = (a * torch.minimum(lam[:, None], t)).sum(1)
    torch.testing.assert_close(h[reachable], need[reachable], rtol=1e-10, atol=1e-12)
    passed = ((t > 0) & (t < lam[:, None])).sum(1)[reachable]  # breakpoints below lam
    assert (passed < geometry._PREFIX).any() and (passed > geometry._PREFIX).any()


def test_hyperplane_projection_unreachable_and_zero_gradients():
    # the box cannot reach the plane: the corner furthest along w, no NaN where w_i = 0
    p = torch.tensor([[0.0, 0.5, 1.0, 0.2]])
    w = torch.tensor([[1.0, 0.0, -2.0, 1e-20]])
    for norm in ("l2", "linf", "l1"):
        delta = project_hyperplane(w, torch.tensor([100.0]), norm, point=p)
        torch.testing.assert_close(delta, torch.tensor([[1.0, 0.0, -1.0, 0.8]]) * (w != 0))
    # an almost-flat coordinate must not spoil the breakpoints (float32 cancellation)
    w = torch.tensor([[3.0, 1e-4, 1e-4, 2.0]])
    delta = project_hyperplane(w, torch.tensor([1.0]), "l2", point=torch.full((1, 4), 0.5))
    assert float((w * delta).sum()) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(delta, w / w.square().sum(), rtol=1e-5, atol=1e-7)


def test_project_ball_per_sample_radius():
    d = torch.tensor([[3.0, -4.0, 0.0], [1.0, 1.0, 1.0]])
    r = torch.tensor([1.0, math.inf])
    torch.testing.assert_close(project_ball(d, "l2", r)[0], torch.tensor([0.6, -0.8, 0.0]))
    torch.testing.assert_close(project_ball(d, "linf", r)[0], torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(project_ball(d, "l0", r)[0], torch.tensor([0.0, -4.0, 0.0]))
    for norm in ("l2", "linf", "l1", "l0"):
        torch.testing.assert_close(project_ball(d, norm, r)[1], d[1])


# ----------------------------------------------------------------------------- curves
def test_curve_and_median_hand_example():
    norms = torch.tensor([0.5, 0.2, 9.0, 0.1, 0.3])
    success = torch.tensor([True, True, False, True, True])  # point 2: attack failed -> inf
    clean = torch.tensor([True, True, True, False, True])  # point 3: clean error -> 0
    # effective norms: [0.5, 0.2, inf, 0, 0.3]
    curve = robust_accuracy_curve(norms, success, clean, [0.0, 0.2, 0.25, 0.5, 100.0])
    torch.testing.assert_close(curve, torch.tensor([0.8, 0.6, 0.6, 0.2, 0.2], dtype=torch.float64))
    assert median_norm(norms, success, clean) == pytest.approx(0.3)
    # even count: mean of the two middle values; inf when the upper middle is a failure
    assert median_norm(norms[:4], success[:4], clean[:4]) == pytest.approx(0.35)
    assert median_norm(
        torch.tensor([0.1, 0.2]), torch.tensor([True, False]), torch.tensor([True, True])
    ) == math.inf
    with pytest.raises(RobustlabError, match="same length"):
        robust_accuracy_curve(norms, success[:3], clean, [0.1])
    with pytest.raises(RobustlabError, match="eps_grid"):
        robust_accuracy_curve(norms, success, clean, [-1.0])
