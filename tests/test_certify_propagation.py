"""The pieces of the bound engine against their definitions: the ReLU triangle relaxation (Zhang
et al. 2018, eq. 2-3) value by value, the closed-form minimum of a linear function over the input
set (against brute force over the box's corners), the specification and margin helpers, where
IBP may be loose, the L2 ball bound of the first layers, the local linearisation of the tightness
metric (Mao et al. 2024) against autograd, and the public bound functions' options."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from robustlab.certify import (
    compute_bounds,
    crown_bounds,
    crown_ibp_bounds,
    ibp_bounds,
    interval_bounds,
    margin_bounds,
    margin_spec,
    propagation_tightness,
    verified,
    worst_margin,
)
from robustlab.certify.bounds import check_method
from robustlab.certify.graph import compile_model
from robustlab.certify.propagation import (
    check_spec,
    linearized,
    refinable,
    relu_relaxation,
    setup,
)
from robustlab.certify.spec import InputSet, interval_lower
from robustlab.errors import RobustlabError
from robustlab.models.layers import Normalize, Residual
from robustlab.threat import Threat

#: (lower, upper): stably active, stably inactive, touching 0 from either side, unstable with
#: the upper end larger, smaller and equal to -lower
INTERVALS = [(0.5, 2.0), (-3.0, -1.0), (0.0, 1.0), (-1.0, 0.0), (-1.0, 3.0), (-3.0, 1.0),
             (-2.0, 2.0)]


def test_relu_relaxation_by_hand():
    lo = torch.tensor([a for a, _ in INTERVALS])
    hi = torch.tensor([b for _, b in INTERVALS])
    upper_slope = [0.0, 0.0, 0.0, 0.0, 0.75, 0.25, 0.5]
    upper_slope[0] = upper_slope[2] = 1.0  # active: relu(z) = z exactly
    intercept = [0.0, 0.0, 0.0, 0.0, 0.75, 0.75, 1.0]  # -l u / (u - l) on unstable neurons
    expected_lower = {
        "adaptive": [1, 0, 1, 0, 1, 0, 0],  # 1 iff u > -l (Zhang et al. 2018)
        "zero": [1, 0, 1, 0, 0, 0, 0],
        "one": [1, 0, 1, 0, 1, 1, 1],
        "parallel": [1, 0, 1, 0, 0.75, 0.25, 0.5],
    }
    for name, low in expected_lower.items():
        rel = relu_relaxation(lo, hi, name)
        assert rel.lower_slope.tolist() == pytest.approx(low), name
        assert rel.upper_slope.tolist() == pytest.approx(upper_slope), name
        assert rel.upper_intercept.tolist() == pytest.approx(intercept), name
        # sound on the whole interval, and the upper line meets relu at both ends
        t = torch.linspace(0, 1, 101)[:, None]
        z = lo + t * (hi - lo)
        assert (rel.lower_slope * z <= torch.relu(z) + 1e-6).all()
        up = rel.upper_slope * z + rel.upper_intercept
        assert (torch.relu(z) <= up + 1e-6).all()
        torch.testing.assert_close(up[[0, -1]], torch.relu(z[[0, -1]]))


def corners_min(a: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """min over the box's 2^d corners of <a_s, v> (a linear function's minimum is at a corner)."""
    d = lower.shape[1]
    best = None
    for bits in itertools.product([0, 1], repeat=d):
        mask = torch.tensor(bits, dtype=torch.bool)
        v = torch.where(mask, upper, lower)  # (B, d)
        val = torch.einsum("bsd,bd->bs", a, v)
        best = val if best is None else torch.minimum(best, val)
    return best


def test_interval_lower_and_concretize_are_the_exact_minima():
    torch.manual_seed(0)
    x = torch.rand(3, 5)
    x[0, :2] = torch.tensor([0.01, 0.99])  # the box clips the ball here
    a = torch.randn(3, 4, 5)
    for eps in (0.05, 0.3):
        inp = InputSet(x, Threat("linf", eps))
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        torch.testing.assert_close(inp.lower, lo)
        torch.testing.assert_close(inp.upper, hi)
        box = corners_min(a, lo, hi)
        torch.testing.assert_close(interval_lower(a, lo, hi), box)
        torch.testing.assert_close(inp.concretize(a), box)
        ball = torch.einsum("bsd,bd->bs", a, x) - eps * a.norm(dim=-1)
        l2 = InputSet(x, Threat("l2", eps))
        assert l2.norm == "l2" and l2.eps == eps
        torch.testing.assert_close(l2.concretize(a), torch.maximum(box, ball))
    # a 4-D input: the coefficients are flattened per sample
    img = torch.rand(2, 1, 2, 2)
    coef = torch.randn(2, 3, 1, 2, 2)
    inp = InputSet(img, Threat("linf", 0.1))
    torch.testing.assert_close(
        inp.concretize(coef), corners_min(coef.flatten(2), inp.lower.flatten(1),
                                          inp.upper.flatten(1)))


def test_specification_shapes():
    model = nn.Sequential(nn.Linear(3, 4)).eval()
    x = torch.rand(2, 3)
    state = setup(model, x, "linf:0.1")
    eye = check_spec(None, state)
    assert eye.shape == (2, 4, 4) and torch.equal(eye[1], torch.eye(4))
    c = torch.randn(5, 4)
    assert torch.equal(check_spec(c, state), c.expand(2, 5, 4))
    c3 = torch.randn(2, 5, 4, dtype=torch.float64)
    got = check_spec(c3, state)
    assert got.dtype == torch.float32 and torch.equal(got, c3.float())
    for bad in (torch.randn(5, 3), torch.randn(3, 5, 4), torch.randn(4), [[1.0] * 4]):
        with pytest.raises(RobustlabError, match="specification C"):
            check_spec(bad, state)


def test_margin_spec_verified_and_worst_margin():
    y = torch.tensor([2, 0])
    c = margin_spec(y, 3, torch.float64)
    assert c.dtype == torch.float64
    assert c[0].tolist() == [[-1, 0, 1], [0, -1, 1], [0, 0, 0]]
    assert c[1].tolist() == [[0, 0, 0], [1, -1, 0], [1, 0, -1]]
    m = torch.tensor([[0.5, 0.2, 0.0], [0.0, 0.3, 0.0]])  # row 2 has a bound of exactly 0
    assert verified(m, y).tolist() == [True, False]
    assert worst_margin(m, y).tolist() == pytest.approx([0.2, 0.0])
    assert verified(torch.tensor([[0.1, -0.1, 0.0]]), torch.tensor([2])).tolist() == [False]


def test_where_ibp_may_be_loose():
    """IBP is exact through elementwise maps and one mixing layer; after a ReLU, a residual
    addition or a second mixing layer it may be loose (the nodes full CROWN refines)."""
    model = nn.Sequential(Normalize(0.5, 0.5), nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2).eval(),
                          nn.Flatten(), nn.ReLU(), nn.Linear(8, 3))
    assert refinable(compile_model(model, (1, 4, 4))) == [False, False, False, False, False,
                                                          True, True]
    two = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Flatten())
    assert refinable(compile_model(two, (3,))) == [False, False, True, True]
    res = nn.Sequential(Residual(nn.Identity()), nn.Linear(3, 2))
    assert refinable(compile_model(res, (3,))) == [False, True, True]


def test_l2_ball_bound_stops_after_the_second_mixing_layer():
    """``Normalize -> Linear -> BatchNorm``: the ball bound ``W' x + b' -+ eps ||W'_i||`` of the
    composed affine map holds at the BatchNorm (the map is still one mixing layer); the next
    Linear is bounded by IBP from that interval (a ball bound through two mixing layers would
    use the wrong row norms)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5).eval()
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
    model = nn.Sequential(Normalize([0.5] * 3, [0.2, 0.5, 1.0]), nn.Linear(3, 5), bn,
                          nn.Linear(5, 2)).eval()
    x = torch.rand(2, 3) * 0.2 + 0.4
    eps = 0.1
    state = setup(model, x, f"l2:{eps}")
    from robustlab.certify.propagation import forward_intervals

    forward_intervals(state)
    head = nn.Sequential(*model[:3])
    jac = torch.autograd.functional.jacobian(lambda v: head(v[None])[0], x[0]).detach()
    lo_in, hi_in = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    c, r = (hi_in + lo_in) / 2, (hi_in - lo_in) / 2
    with torch.no_grad():
        value, center = head(x), head(c)
    rad_box, rad_ball = r @ jac.abs().T, eps * jac.norm(dim=1)
    lo3 = torch.maximum(center - rad_box, value - rad_ball)
    hi3 = torch.minimum(center + rad_box, value + rad_ball)
    torch.testing.assert_close(state.intervals[3][0], lo3)
    torch.testing.assert_close(state.intervals[3][1], hi3)
    w, b = model[3].weight.detach(), model[3].bias.detach()
    mid, half = (hi3 + lo3) / 2, (hi3 - lo3) / 2
    torch.testing.assert_close(state.intervals[4][0], mid @ w.T + b - half @ w.abs().T)
    torch.testing.assert_close(state.intervals[4][1], mid @ w.T + b + half @ w.abs().T)


def test_linearisation_is_the_local_linear_map_of_autograd():
    """Every ReLU becomes its 0/1 pattern at ``x`` (0 where the pre-activation is 0, as
    autograd's relu' (0) = 0): the linearised graph has the model's value and Jacobian at x."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6, bias=False), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(),
                          nn.Linear(4, 2)).eval()
    x = torch.rand(3, 3)
    x[0] = 0.0  # every first-layer pre-activation is exactly 0
    graph = compile_model(model, (3,))
    lin = linearized(graph, x)
    assert [n.name for n in lin.nodes] == [n.name for n in graph.nodes]
    assert [n.shape for n in lin.nodes] == [n.shape for n in graph.nodes]
    with torch.no_grad():
        torch.testing.assert_close(lin.forward(x), model(x))
    eye = torch.eye(3)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x[i])
        lin_i = linearized(graph, x[i : i + 1])  # the pattern of sample i
        with torch.no_grad():
            base = lin_i.forward(x[i : i + 1])[0]
            cols = torch.stack([lin_i.forward(x[i : i + 1] + eye[j])[0] - base
                                for j in range(3)], 1)
        torch.testing.assert_close(cols, jac.detach(), atol=1e-5, rtol=1e-5)


def deep_linear(k: int, dtype=torch.float32) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(k)
    w = [torch.randn(6, 4, dtype=dtype), torch.randn(5, 6, dtype=dtype),
         torch.randn(k, 5, dtype=dtype)]
    model = nn.Sequential(*[nn.Linear(a.shape[1], a.shape[0], bias=False) for a in w]).to(dtype)
    with torch.no_grad():
        for layer, weight in zip(model, w):
            layer.weight.copy_(weight)
    return model.eval(), w


@pytest.mark.parametrize("k,dtype", [(2, torch.float32), (4, torch.float64)])
def test_tightness_of_margins_in_closed_form(k, dtype):
    """Mao et al. 2024, Definition 3.1 on the margins ``c_j = e_y - e_j``: for a deep linear net
    the ratio is ``sum |c_j W3 W2 W1| / sum |c_j W3| |W2| |W1|`` (the last layer elided into C;
    the box radius cancels), averaged over ``j != y`` (row y has width 0 and is left out). With
    a small radius every width is far below 1."""
    model, w = deep_linear(k, dtype)
    x = torch.rand(3, 4, dtype=dtype) * 0.5 + 0.25
    y = torch.tensor([0, k - 1, 1])
    t = propagation_tightness(model, x, "linf:0.001", y)
    assert t.dtype == dtype
    c = margin_spec(y, k, dtype)  # (N, K, K)
    exact = (c @ (w[2] @ w[1] @ w[0])).abs().sum(-1)
    ibp = ((c @ w[2]).abs() @ w[1].abs() @ w[0].abs()).sum(-1)
    ratio = torch.where(ibp > 0, exact / ibp.clamp_min(1e-30), torch.zeros_like(ibp))
    expected = ratio.sum(1) / (k - 1)
    torch.testing.assert_close(t, expected)


def test_tightness_of_a_network_ending_in_a_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU()).eval()
    t = propagation_tightness(model, torch.rand(2, 3), "linf:0.01")
    assert t.shape == (2,) and ((0 <= t) & (t <= 1 + 1e-6)).all()


def raw_crown_net() -> nn.Module:
    """relu(3 x - 1) on x in [0, 1]: the pre-activation is [-1, 2], so the adaptive lower slope
    is 1 (bound -1) and the slope 0 gives the IBP bound 0."""
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).eval()
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[0].bias.fill_(-1.0)
        model[2].weight.fill_(1.0)
        model[2].bias.fill_(0.0)
    return model


def test_public_crown_functions_take_their_options():
    model = raw_crown_net()
    x = torch.tensor([[0.5]])
    spec = torch.ones(1, 1)
    with torch.no_grad():
        assert float(crown_bounds(model, x, "linf:0.5", spec)) == pytest.approx(-1.0)
        assert float(crown_bounds(model, x, "linf:0.5", spec, lower_slope="zero")) == 0.0
        assert float(crown_bounds(model, x, "linf:0.5", -spec, max_elements=1)) == \
            pytest.approx(-2.0)
        # without a specification, each logit is bounded
        torch.testing.assert_close(crown_bounds(model, x, "linf:0.5"),
                                   crown_ibp_bounds(model, x, "linf:0.5"))
        y = torch.zeros(1, dtype=torch.long)
        wide = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
        with torch.no_grad():
            wide[0].weight.copy_(torch.tensor([[3.0], [-3.0]]))
            wide[0].bias.copy_(torch.tensor([-1.0, 2.0]))
            wide[2].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
            wide[2].bias.zero_()
        for slope in ("adaptive", "zero"):
            for tighten in (False, True):
                kw = dict(method="crown", lower_slope=slope, tighten=tighten)
                torch.testing.assert_close(margin_bounds(wide, x, y, "linf:0.5", **kw),
                                           compute_bounds(wide, x, "linf:0.5", y=y, **kw))
        assert not torch.equal(margin_bounds(wide, x, y, "linf:0.5", tighten=False),
                               margin_bounds(wide, x, y, "linf:0.5"))


def test_reported_bound_is_the_larger_of_crown_and_ibp():
    model = raw_crown_net()
    x = torch.tensor([[0.5], [0.9]])
    spec = torch.tensor([[1.0], [-1.0]])
    with torch.no_grad():
        for method in ("crown-ibp", "crown"):
            raw = compute_bounds(model, x, "linf:0.5", spec, method=method, tighten=False)
            tight = compute_bounds(model, x, "linf:0.5", spec, method=method)
            torch.testing.assert_close(tight, torch.maximum(raw, ibp_bounds(model, x, "linf:0.5",
                                                                            spec)))
    lo, hi = interval_bounds(model, x, "linf:0.5")
    torch.testing.assert_close(lo, torch.tensor([[0.0], [0.2]]))
    torch.testing.assert_close(hi, torch.tensor([[2.0], [2.0]]))


def test_method_names_are_normalised():
    assert check_method(" CROWN_IBP ") == "crown-ibp" and check_method("IBP") == "ibp"
    model = raw_crown_net()
    x = torch.tensor([[0.5]])
    with pytest.raises(RobustlabError, match="either a specification C or labels y"):
        compute_bounds(model, x, "linf:0.1", torch.ones(1, 1), y=torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        got = margin_bounds(model, x, torch.zeros(1, dtype=torch.long), "linf:0.1",
                            method="CROWN")
    assert math.isfinite(float(got.sum()))
