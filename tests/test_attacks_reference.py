"""APGD, MD, BETA and FAB against their papers' update rules on models whose gradients are known.

Each test spies on the gradient calls of an attack (the iterates it visits) on a tiny float64 model
and compares them with values worked out by hand from the paper's equations, so that breaking one
rule (APGD's momentum, its step-size halving, its restart from the best point or its initial step,
MD's first stage, BETA's target selection, FAB's bias toward the original point) changes a number.
"""

from __future__ import annotations

import math

import pytest
import torch
from _attack_models import F64, affine, mlp, record_iterates
from torch import nn

from robustlab.attacks import APGD, BETA, FAB, MD
from robustlab.attacks import fab as fab_module
from robustlab.attacks.beta import best_targets
from robustlab.threat import Threat
from robustlab.training.methods import METHODS


def start_at(monkeypatch, offsets) -> None:
    """Replace the random start by ``x + offsets`` (clipped to the box)."""
    monkeypatch.setattr(
        Threat, "random_init", lambda self, x, generator=None: (x + offsets).clamp(0.0, 1.0)
    )


# ----------------------------------------------------------------------------- APGD


def neg_square_distance(logits, y, target=None):
    """A concave objective with its maximum at the clean point: ``-(z_0 - 0.5)^2``."""
    return -((logits[:, 0] - 0.5) ** 2)


def test_apgd_iterates_follow_algorithm_1(monkeypatch):
    """Croce & Hein 2020, Algorithm 1, in one dimension: z_0 = u, objective f(u) = -(u - 0.5)^2,
    x = 0.5, eps = 0.2, start d_0 = u_0 - x = 0.1, so s(grad f) = -sign(d). With 10 steps the
    checkpoints are w = 3, 5, 6, 7, 8, 9. Writing P for clipping d to [-0.2, 0.2]:

    k=0  eta = 2 eps = 0.4:   d1 = P(0.1 - 0.4) = -0.2                  (no momentum at k = 0)
    k=1  z = P(-0.2 + 0.4) = 0.2,  d2 = -0.2 + .75 (0.4) + .25 (-0.3) = 0.025     (increase 1)
    k=2  z = -0.2,  d3 = 0.025 + .75 (-0.225) + .25 (0.225) = -0.0875
         w=3: 1 increase < 0.75 * 3 -> eta = 0.2, restart from the best d2 = 0.025
    k=3  z = 0.025 - 0.2,  d4 = 0.025 + .75 (-0.2) + 0 = -0.125   (x_prev = x_best after reset)
    k=4  z = 0.075,  d5 = -0.125 + .75 (0.2) + .25 (-0.15) = -0.0125            (increase 1)
         w=5: 1 < 0.75 * 2 -> eta = 0.1, restart from d5 (the new best)
    k=5  d6 = -0.0125 + .75 (0.1) = 0.0625
         w=6: 0 < 0.75 -> eta = 0.05, restart from d5
    k=6  d7 = -0.0125 + .75 (0.05) = 0.025                                     (increase 1)
         w=7: condition 1 fails, but eta and f_max did not change since w=6 (condition 2)
              -> eta = 0.025, restart from d5
    k=7  d8 = -0.0125 + .75 (0.025) = 0.00625      (increase 1; new best, so w=8 keeps eta)
    k=8  z = 0.00625 - 0.025,  d9 = 0.00625 + .75 (-0.025) + .25 (0.01875) = -0.0078125
         w=9: 0 < 0.75 -> eta = 0.0125, restart from d8
    k=9  d10 = 0.00625 + .75 (-0.0125) = -0.003125     (the best point: the attack's output)
    """
    model = affine([[1.0], [0.0]], [0.0, 0.0])  # class 0 for every u > 0: never adversarial
    x, y = torch.tensor([[0.5]], dtype=F64), torch.tensor([0])
    start_at(monkeypatch, 0.1)
    attack = APGD("linf:0.2", steps=10, loss=neg_square_distance)
    seen = record_iterates(monkeypatch, attack)
    x_adv = attack.maximize(model, x, y)
    d = [0.1, -0.2, 0.025, -0.0875, -0.125, -0.0125, 0.0625, 0.025, 0.00625, -0.0078125, -0.003125]
    got = torch.cat(seen).squeeze(1) - 0.5
    torch.testing.assert_close(got, torch.tensor(d, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(x_adv, x + d[-1], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- MD

# y = 0 wins by a wide margin (bias 10) and class 1 is always the largest other logit (z_1 - z_2
# >= 1.1 - 0.36 on the ball), so each objective has a constant gradient:
#   -z_0: -w_0 -> sign (-1, 1, -1);   max_{j!=0} z_j = z_1: w_1 -> sign (1, -1, -1);
#   margin z_1 - z_0: w_1 - w_0 = (1, 0.5, -1.5) -> sign (1, 1, -1).
MD_W = [[1.0, -1.0, 0.5], [2.0, -0.5, -1.0], [0.1, 0.1, 0.1]]
MD_B = [10.0, 0.0, -1.0]


def test_md_first_stage_ascends_one_margin_term(monkeypatch):
    """Ma et al. 2022: the first ``stage1_steps`` steps maximise one term of the margin (-z_y on
    the first restart, max_{j!=y} z_j on the second), the rest the margin itself, each step
    x_{k+1} = P(x_k + eta_k sign(grad)) with eta_k = eps (1 + cos(pi k / K))."""
    model = affine(MD_W, MD_B)
    x, y = torch.full((1, 3), 0.5, dtype=F64), torch.tensor([0])
    eps, steps = 0.1, 6
    attack = MD(f"linf:{eps}", steps=steps, stage1_steps=2, restarts=2, seed=0)
    seen = record_iterates(monkeypatch, attack)
    attack.run(model, x, y)
    assert len(seen) == 2 * steps  # both restarts run every step (the point stays robust)
    term = {0: [-1.0, 1.0, -1.0], 1: [1.0, -1.0, -1.0]}
    margin = [1.0, 1.0, -1.0]
    threat = Threat("linf", eps)
    for restart in (0, 1):
        run = seen[restart * steps : (restart + 1) * steps]
        for k in range(steps - 1):
            sign = torch.tensor([term[restart] if k < 2 else margin], dtype=F64)
            eta = eps * (1 + math.cos(math.pi * k / steps))
            want = threat.project(run[k] + eta * sign, x)
            torch.testing.assert_close(run[k + 1], want, rtol=0, atol=1e-12)


class CancellingTerms(nn.Module):
    """Two margin terms whose gradients cancel: z_0 = -u, z_1 = -u + 10 relu(u - 0.74) - 0.05.
    The margin z_1 - z_0 is flat (-0.05, zero gradient) for u < 0.74 and positive for u > 0.745,
    while -z_0 = u increases toward the adversarial region everywhere."""

    def forward(self, x):
        u = x[:, :1]
        return torch.cat([-u, -u + 10 * torch.relu(u - 0.74) - 0.05], 1)


def test_md_first_stage_escapes_a_flat_margin(monkeypatch):
    """The point of MD's first stage: where the margin gives no gradient, -z_y still does. From
    u = 0.4 margin ascent alone (``stage1_steps=0``) cannot move; MD's first step of 2 eps on
    -z_y reaches u = 0.75, where z_1 - z_0 = 0.05 > 0."""
    model, x, y = CancellingTerms(), torch.tensor([[0.4]], dtype=F64), torch.tensor([0])
    start_at(monkeypatch, 0.0)
    margin_only = MD("linf:0.35", steps=10, stage1_steps=0, seed=0).run(model, x, y)
    assert not margin_only.success.any()
    md = MD("linf:0.35", steps=10, seed=0).run(model, x, y)
    assert md.success.all()


# ----------------------------------------------------------------------------- BETA

# z = (1, u + 0.01, v) on the inputs (u, v): M_1 = u + 0.01 - 1, M_2 = v - 1, never adversarial on
# the ball (eps = 0.4 around (0.5, 0.5)). Rank-1 target: class 1 (z_1 > z_2 at x), then class 2.
BETA_W, BETA_B = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [1.0, 0.01, 0.0]
# replica rows: (target 1, point 0), (target 1, point 1), (target 2, point 0), (target 2, point 1)
BETA_STARTS = [[-0.2, 0.0], [-0.2, 0.3], [0.35, -0.2], [0.0, -0.15]]


def beta_case(monkeypatch):
    model = affine(BETA_W, BETA_B)
    x, y = torch.full((2, 2), 0.5, dtype=F64), torch.tensor([0, 0])
    start_at(monkeypatch, torch.tensor(BETA_STARTS, dtype=F64))
    return model, x, y


def test_beta_keeps_the_class_with_the_largest_own_margin(monkeypatch):
    """Robey et al. 2024, Algorithm 1: j* = argmax_j M_j(x'_j). One step of 0.1 along the sign of
    grad M_j = w_j - w_0 moves u for j = 1 and v for j = 2:

    point 0: x'_1 = (0.4, 0.5): M_1 = -0.59;  x'_2 = (0.85, 0.4): M_2 = -0.60  -> j* = 1
    point 1: x'_1 = (0.4, 0.8): M_1 = -0.59;  x'_2 = (0.5, 0.45): M_2 = -0.55  -> j* = 2

    The untargeted margin max_{j!=0} z_j - z_0 would rank them the other way round in both
    points (-0.14 for x'_2 against -0.5 in point 0, -0.2 for x'_1 against -0.49 in point 1)."""
    model, x, y = beta_case(monkeypatch)
    want = torch.tensor([[0.4, 0.5], [0.5, 0.45]], dtype=F64)
    attack = BETA("linf:0.4", steps=1, step_size=0.1)
    torch.testing.assert_close(attack.maximize(model, x, y), want, rtol=0, atol=1e-12)
    # BETA adversarial training uses the same selection, on every class, without early stopping
    method = METHODS.build("beta-at", threat="linf:0.4", steps=1, step_size=0.1)
    inner = method.make_attack(method.threat)
    assert isinstance(inner, BETA) and inner.n_targets is None and not inner.early_stop
    assert not inner.keep_adversarial
    torch.testing.assert_close(inner.maximize(model, x, y), want, rtol=0, atol=1e-12)


def test_beta_never_discards_a_misclassified_candidate():
    """The paper's rule picks the largest own margin; the evaluation attack overrides it only
    where that pick is still correct but another class's candidate is misclassified (point 1:
    class 0 has the largest own margin, -0.1, but only class 2's candidate is misclassified)."""
    own = torch.tensor([[0.3, -0.1, -0.2], [0.1, -0.5, -0.4], [0.2, -0.3, -0.6]])
    adversarial = torch.tensor([[True, False, False], [False, False, False], [True, True, False]])
    assert best_targets(own).tolist() == [0, 0, 0]  # Algorithm 1 alone
    assert best_targets(own, adversarial).tolist() == [0, 2, 0]


def test_beta_at_runs_every_step_the_evaluation_attack_stops_at_the_target(monkeypatch):
    """M_1 = z_1 - z_0 = u - 0.55 from u = 0.5, steps of 0.1: the point is classified as 1 after
    one step. The evaluation attack stops there (u = 0.6); BETA-AT's attacker, like the paper's
    Algorithm 1, takes all three steps (u = 0.8)."""
    model = affine([[0.0], [1.0]], [0.0, -0.55])
    x, y = torch.tensor([[0.5]], dtype=F64), torch.tensor([0])
    start_at(monkeypatch, 0.0)
    attack = BETA("linf:0.4", steps=3, step_size=0.1)
    torch.testing.assert_close(attack.maximize(model, x, y), x + 0.1, rtol=0, atol=1e-12)
    method = METHODS.build("beta-at", threat="linf:0.4", steps=3, step_size=0.1)
    inner = method.make_attack(method.threat)
    torch.testing.assert_close(inner.maximize(model, x, y), x + 0.3, rtol=0, atol=1e-12)


def test_beta_equals_the_best_of_separate_targeted_ascents(monkeypatch):
    """On a 5-class MLP, the batched untargeted BETA returns, per point, the result of the
    targeted ascent (run alone toward each wrong class from the same start) whose own margin
    M_j = z_j - z_y is the largest."""
    model = mlp().to(F64)
    x = torch.rand(6, 16, generator=torch.Generator().manual_seed(4), dtype=F64)
    y = model(x).argmax(1)
    monkeypatch.setattr(  # a start that depends only on x, the same for every target
        Threat,
        "random_init",
        lambda self, x, g=None: (x + self.eps * torch.sin(97 * x)).clamp(0, 1),
    )
    kw = {"steps": 8, "step_size": 0.02}
    got = BETA("linf:0.08", **kw).maximize(model, x, y)
    cands, margins = [], []
    for j in range(1, 5):
        t = (y + j) % 5
        cand = BETA("linf:0.08", targeted=True, **kw).maximize(model, x, y, t)
        z = model(cand)
        cands.append(cand)
        margins.append(z.gather(1, t[:, None]) - z.gather(1, y[:, None]))
    best = torch.cat(margins, 1).argmax(1)
    want = torch.stack(cands)[best, torch.arange(6)]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- FAB


@pytest.mark.parametrize("norm,delta", [("l2", [0.06, 0.08]), ("linf", [0.5 / 7] * 2),
                                        ("l1", [0.0, 0.125])])  # fmt: skip
@pytest.mark.parametrize("alpha_max", [0.1, 0.05])
def test_fab_biased_step_follows_eq_7(monkeypatch, norm, delta, alpha_max):
    """Croce & Hein 2020 (FAB), the biased step x_{k+1} = (1 - a)(x_k + eta d_k) + a (x + eta d_0),
    a = min(|d_k| / (|d_k| + |d_0|), alpha_max), eta = 1.05, then x + beta (x_{k+1} - x) with
    beta = 0.9 once adversarial. Binary linear model f = z_1 - z_0 = 3u + 4v - 4, f(x) = -0.5 at
    x = (0.5, 0.5): d_0 is the projection ``delta`` of x onto f = 0 (L2 0.1 (0.6, 0.8), Linf
    0.5 / 7 (1, 1), L1 0.125 e_2), and from any x + s d_0 the projection is d_k = (1 - s) d_0.

    step 1 (x_0 = x, d_k = d_0): x + 1.05 d_0, adversarial -> back to s_1 = 0.945
    step 2: a = min(0.055 / 1.055, alpha_max), c_2 = (1 - a)(s_1 + 1.05 (1 - s_1)) + 1.05 a,
            adversarial -> s_2 = 0.9 c_2
    The smallest adversarial point of the first three steps is x + c_2 d_0."""
    model = affine([[0.0, 0.0], [3.0, 4.0]], [0.0, -4.0])
    x, y = torch.full((1, 2), 0.5, dtype=F64), torch.tensor([0])
    seen: list[torch.Tensor] = []
    inner = fab_module.class_gradients

    def spy(forward, x_k, *args):
        seen.append(x_k.detach().clone())
        return inner(forward, x_k, *args)

    monkeypatch.setattr(fab_module, "class_gradients", spy)
    result = FAB(norm=norm, steps=3, alpha_max=alpha_max).run(model, x, y)
    d0 = torch.tensor([delta], dtype=F64)
    a = min(0.055 / 1.055, alpha_max)
    c2 = (1 - a) * (0.945 + 1.05 * 0.055) + 1.05 * a
    for point, s in zip(seen, [0.0, 0.945, 0.9 * c2], strict=True):
        torch.testing.assert_close(point, x + s * d0, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.x_adv, x + c2 * d0, rtol=0, atol=1e-12)
