"""Lipschitz-margin certificates in closed form (Tsuzuku et al. 2018; Hu et al. 2023, Section 3)
and the pieces behind them: the per-pair constants ``K_yj``, the bound of each residual shape
against the function's true Lipschitz constant, power iteration as an estimate from below with
warm starts, EMMA's logits (Hu et al. 2023, Section 4) and the LiResNet block's construction.

For ``f = W2 relu(W1 x + b1) + b2`` the feature map is ``||W1||_2``-Lipschitz, so
``K_yj = ||w2_y - w2_j||_2 ||W1||_2`` and the certified radius is
``min_{j != y} (z_y - z_j) / K_yj`` (0 when misclassified); without a final Linear layer
``K_yj = sqrt(2) L``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.certify import LiResNetBlock, certify, emma_logits, emma_loss, lipschitz_certify
from robustlab.certify.graph import compile_model
from robustlab.certify.lipschitz import (
    LinearMap,
    PowerIteration,
    conv_spectral_bound,
    graph_lipschitz,
    power_iteration_norm,
    spectral_bound,
)
from robustlab.certify.propagation import linearized
from robustlab.errors import RobustlabError
from robustlab.models.layers import Normalize, Residual


def two_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def test_pair_constants_and_radius_in_closed_form():
    model = two_layer()
    x = torch.rand(16, 4)
    with torch.no_grad():
        z = model(x)
    y = torch.arange(16) % 3  # some correct, some not
    cert = lipschitz_certify(model, x, y)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    feat = torch.linalg.matrix_norm(w1, ord=2)
    k = (w2[y][:, None] - w2[None]).norm(dim=2) * feat
    torch.testing.assert_close(cert.pair_constants, k)
    assert (cert.pair_constants.gather(1, y[:, None]) == 0).all()
    assert cert.lipschitz == pytest.approx(float(torch.linalg.matrix_norm(w2, ord=2) * feat),
                                           rel=1e-5)
    gap = z.gather(1, y[:, None]) - z
    ratio = (gap / k).scatter(1, y[:, None], float("inf"))
    expected = ratio.min(1).values.clamp_min(0)
    torch.testing.assert_close(cert.radius, expected)
    wrong = z.argmax(1) != y
    assert wrong.any() and (cert.radius[wrong] == 0).all() and (cert.radius[~wrong] > 0).all()
    # the certifier: certified iff every margin exceeds K_yj eps; the radius is the one above
    eps = float(cert.radius[~wrong].median())
    res = certify(model, (x, y), "lipschitz", f"l2:{eps!r}")
    low = (gap - eps * k).scatter(1, y[:, None], float("inf")).min(1).values
    torch.testing.assert_close(res.lower_bound, low)
    assert res.certified.tolist() == (low > 0).tolist()
    torch.testing.assert_close(res.radius, cert.radius)
    assert res.summary["mean_radius"] == pytest.approx(float(cert.radius.mean()))
    assert res.summary["mean_lower_bound"] == pytest.approx(float(low.mean()))


def test_without_a_final_linear_layer_every_pair_has_sqrt2_times_the_bound():
    """``Linear -> BatchNorm1d``: ``L = max |scale| ||W||``, ``K_yj = sqrt(2) L`` (float64 kept)."""
    torch.manual_seed(1)
    bn = nn.BatchNorm1d(3)
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.0]))
        bn.weight.copy_(torch.tensor([1.5, -3.0, 0.5]))
    model = nn.Sequential(nn.Linear(4, 3), bn).double().eval()
    x = torch.rand(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    cert = lipschitz_certify(model, x, y)
    with torch.no_grad():
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs().max()
        total = float(scale * torch.linalg.matrix_norm(model[0].weight, ord=2))
    assert cert.lipschitz == pytest.approx(total, rel=1e-9)
    expected = torch.full((5, 3), math.sqrt(2) * total, dtype=torch.float64).scatter(
        1, y[:, None], 0.0)
    assert cert.pair_constants.dtype == torch.float64
    torch.testing.assert_close(cert.pair_constants, expected)


def test_a_network_without_weight_layers():
    """``Normalize -> Flatten``: the only map is the scaling by 1 / std, so ``L = 4``."""
    model = nn.Sequential(Normalize(0.5, 0.25), nn.Flatten()).eval()
    x = torch.rand(3, 4)
    cert = lipschitz_certify(model, x)
    assert cert.lipschitz == pytest.approx(4.0)
    y = model(x).argmax(1)
    expected = torch.full((3, 4), 4 * math.sqrt(2)).scatter(1, y[:, None], 0.0)
    torch.testing.assert_close(cert.pair_constants, expected)


def test_a_constant_margin_certifies_only_a_correct_prediction():
    """With ``K_yj = 0`` (here: a last layer with zero weights) the margin ``z_y - z_j`` never
    changes: the radius is unbounded when the label wins and 0 when it loses."""
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    cert = lipschitz_certify(model, torch.rand(3, 4), torch.tensor([0, 1, 2]))
    assert cert.radius.tolist() == [0.0, 0.0, float("inf")]


def empirical(model: nn.Module, d: int) -> float:
    """Largest Jacobian spectral norm at random points (a lower bound of the constant)."""
    best = 0.0
    for x in torch.rand(32, d) * 2 - 1:
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x)
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best


def residual_models():
    torch.manual_seed(2)
    neg = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        neg.weight.copy_(-torch.eye(3))
    bn = nn.BatchNorm1d(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([-1.5, 0.5, 2.0]))
    return {
        # x + W relu(x) with W = -I is min(x, 0) per coordinate: 1-Lipschitz, though ||I + W|| = 0
        "relu-then-linear": Residual(nn.Sequential(nn.ReLU(), neg)),
        "linear-then-relu": Residual(nn.Sequential(nn.Linear(3, 3), nn.ReLU())),
        "batchnorm": Residual(bn),
        "linear-shortcut": Residual(nn.Linear(3, 3), shortcut=nn.Linear(3, 3)),
    }


@pytest.mark.parametrize("name", list(residual_models()))
def test_residual_bounds_are_at_least_the_true_constant(name):
    block = residual_models()[name]
    model = nn.Sequential(block, nn.Linear(3, 2)).eval()
    graph = compile_model(model, (3,))
    with torch.no_grad():
        features = float(graph_lipschitz(graph, spectral_bound, upto=graph.output - 1))
    assert features >= empirical(block, 3) * (1 - 1e-6)
    if name == "relu-then-linear":
        assert features >= 1.0


def test_a_linear_residual_is_bounded_as_one_map():
    """``x -> Normalize (1 / 0.25) -> x + W x``: the block is the single map ``I + W`` after a
    4-Lipschitz scaling, so the features are ``4 ||I + W||``-Lipschitz."""
    torch.manual_seed(3)
    block = Residual(nn.Linear(3, 3))
    graph = compile_model(nn.Sequential(Normalize(0.5, 0.25), block, nn.Linear(3, 2)), (3,))
    with torch.no_grad():
        features = float(graph_lipschitz(graph, spectral_bound, upto=graph.output - 1))
        exact = float(torch.linalg.matrix_norm(block.body.weight + torch.eye(3), ord=2))
    assert features == pytest.approx(4 * exact, rel=1e-6)


def test_a_linearised_graph_has_no_single_constant():
    """The per-sample ReLU patterns of the tightness metric's linearisation differ per input."""
    graph = compile_model(two_layer(), (4,))
    with pytest.raises(RobustlabError) as err:
        graph_lipschitz(linearized(graph, torch.rand(2, 4)), spectral_bound)
    assert "per-sample" in str(err.value) and "Lipschitz" in str(err.value)
    assert str(err.value).endswith(".")


def linear_maps():
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 2, 3, padding=1)
    graph = compile_model(nn.Sequential(conv, nn.Flatten()), (2, 5, 5))
    lin = nn.Linear(4, 4)
    lgraph = compile_model(nn.Sequential(lin), (4,))
    return {
        "conv": (LinearMap(1, graph.nodes[1].op, False, (2, 5, 5)), conv, True),
        "conv-residual": (LinearMap(1, graph.nodes[1].op, True, (2, 5, 5)), conv, True),
        "linear-residual": (LinearMap(1, lgraph.nodes[1].op, True, (4,)), lin, False),
    }


def dense(lm: LinearMap) -> torch.Tensor:
    d = math.prod(lm.in_shape)
    return torch.autograd.functional.jacobian(
        lambda v: lm.apply(v.reshape(1, *lm.in_shape)).flatten(), torch.zeros(d)).detach()


@pytest.mark.parametrize("name", list(linear_maps()))
def test_linear_map_and_its_adjoint(name):
    """``apply`` is ``op`` (plus the identity for a residual map) and ``apply_t`` its adjoint."""
    lm, layer, conv = linear_maps()[name]
    v = torch.randn(1, *lm.in_shape)
    with torch.no_grad():
        plain = layer(v) - (layer.bias.view(-1, 1, 1) if conv else layer.bias)
        torch.testing.assert_close(lm.apply(v), plain + v if lm.residual else plain)
        a = torch.randn_like(v)
        torch.testing.assert_close((a * lm.apply(v)).sum(), (lm.apply_t(a) * v).sum())


@pytest.mark.parametrize("name", list(linear_maps()))
def test_power_iteration_converges_from_below_with_warm_starts(name):
    """Each call continues from the vector the last one stopped at (warm start): one iteration
    per call still converges to the spectral norm, from below; the start is seeded."""
    lm, _, _ = linear_maps()[name]
    exact = float(torch.linalg.matrix_norm(dense(lm).double(), ord=2))
    pi = PowerIteration(iterations=1, seed=3)
    with torch.no_grad():
        first = float(pi(lm))
        for _ in range(200):
            last = float(pi(lm))
    assert first < exact * (1 - 1e-3)  # one step from a random start is not there yet
    assert last == pytest.approx(exact, rel=1e-4) and last <= exact * (1 + 1e-5)
    torch.manual_seed(123)  # the global generator does not matter
    with torch.no_grad():
        assert float(PowerIteration(iterations=1, seed=3)(lm)) == first
        assert float(power_iteration_norm(lm, iterations=1, seed=3)) == first
        assert float(power_iteration_norm(lm)) == pytest.approx(exact, rel=1e-3)


def test_power_iteration_keeps_one_vector_per_map():
    """The plain and the residual map of the same node have their own vectors (buffers), each
    the top right singular vector of its own map after converging."""
    maps = linear_maps()
    plain, res = maps["conv"][0], maps["conv-residual"][0]
    pi = PowerIteration(iterations=100)
    with torch.no_grad():
        pi(plain)
        pi(res)
        pi(plain)
        buffers = dict(pi.named_buffers())
        assert len(buffers) == 2
        for lm in (plain, res):
            exact = float(torch.linalg.matrix_norm(dense(lm).double(), ord=2))
            found = [float(lm.apply(v).norm()) for v in buffers.values()]
            assert any(f == pytest.approx(exact, rel=1e-4) for f in found)


def test_power_iteration_in_double_precision():
    lin = nn.Linear(5, 3).double()
    graph = compile_model(nn.Sequential(lin), (5,))
    lm = LinearMap(1, graph.nodes[1].op, False, (5,))
    with torch.no_grad():
        est = power_iteration_norm(lm, iterations=200)
        exact = float(torch.linalg.matrix_norm(lin.weight, ord=2))
    assert est.dtype == torch.float64 and float(est) == pytest.approx(exact, rel=1e-9)


def test_emma_logits_closed_form_with_small_constants():
    """``z_j + clip((z_y - z_j) / (eps K_yj), 0.01, 1) eps K_yj`` with ``eps K_yj`` below 1.
    eps = 0.25, K = (0, 2, 0.5, 4): eps K = (0, 0.5, 0.125, 1); gaps (0, 2, 0.1, 3); clipped
    ratios (0.01, 1, 0.8, 1); raised by (0, 0.5, 0.1, 1)."""
    z = torch.tensor([[3.0, 1.0, 2.9, 0.0]], requires_grad=True)
    y = torch.tensor([0])
    k = torch.tensor([[0.0, 2.0, 0.5, 4.0]])
    out = emma_logits(z, y, k, eps=0.25)
    torch.testing.assert_close(out, torch.tensor([[3.0, 1.5, 3.0, 1.0]]))
    loss = emma_loss(z, y, k, eps=0.25)
    torch.testing.assert_close(loss, F.cross_entropy(out, y))
    assert float(loss.detach()) == pytest.approx(-math.log(math.exp(3) / sum(
        math.exp(v) for v in (3.0, 1.5, 3.0, 1.0))), rel=1e-6)
    (g,) = torch.autograd.grad(loss, z)
    # no gradient through the clipped ratio: d out / d z is the identity
    torch.testing.assert_close(g, torch.softmax(out, 1).detach() - F.one_hot(y, 4))


def test_liresnet_block_construction():
    """Same padding keeps the shape for any odd kernel; the kernel starts small (normal with
    std 1 / (C k^2)) and the bias at 0, so the block starts near the identity."""
    torch.manual_seed(5)
    block = LiResNetBlock(16, kernel_size=3)
    w = block.body.weight.detach()
    assert float(w.std()) == pytest.approx(1 / (16 * 9), rel=0.1)
    assert float(w.mean().abs()) < 0.1 / (16 * 9)
    assert (block.body.bias == 0).all() and block.shortcut is None
    wide = LiResNetBlock(2, kernel_size=5)
    x = torch.rand(1, 2, 6, 6)
    assert wide(x).shape == x.shape and wide.body.padding == (2, 2)


#: (Conv2d arguments, per-sample input shape): asymmetric paddings and shapes, strides, groups,
#: dilations, and a dilated kernel as large as the padded input
CIRCULAR = [
    (dict(in_channels=2, out_channels=3, kernel_size=3, padding=(1, 2)), (2, 5, 7)),
    (dict(in_channels=2, out_channels=2, kernel_size=(2, 3), stride=2, padding=(0, 1)), (2, 6, 5)),
    (dict(in_channels=4, out_channels=4, kernel_size=1, groups=2), (4, 3, 3)),
    (dict(in_channels=2, out_channels=4, kernel_size=3, padding=1, dilation=(2, 1), groups=2),
     (2, 6, 5)),
    (dict(in_channels=1, out_channels=2, kernel_size=3, padding=(1, 0), dilation=(1, 2)),
     (1, 4, 5)),
    (dict(in_channels=2, out_channels=2, kernel_size=3, padding=2, dilation=2), (2, 1, 4)),
    # [1, -1] dilated by 2 along one axis of a 6-long torus: its spectrum misses the frequency
    # where the undilated kernel's peaks (2 at n / 2), the dilated norm is sqrt(3)
    (dict(in_channels=1, out_channels=1, kernel_size=(2, 1), dilation=(2, 1), bias=False),
     (1, 6, 3)),
    (dict(in_channels=1, out_channels=1, kernel_size=(1, 2), dilation=(1, 2), bias=False),
     (1, 3, 6)),
]


def circular_norm(conv: nn.Conv2d, kernel: torch.Tensor, n_h: int, n_w: int) -> float:
    """Spectral norm of the stride-s circular convolution with ``kernel`` on the n_h x n_w torus,
    from its dense matrix (``y[i] = sum_k w[k] x[(s i + d k) mod n]``)."""
    kh = conv.dilation[0] * (kernel.shape[2] - 1) + 1
    kw = conv.dilation[1] * (kernel.shape[3] - 1) + 1

    def f(v):
        x = v.reshape(1, conv.in_channels, n_h, n_w)
        x = torch.cat([x, x], 2)[:, :, : n_h + kh - 1]  # wrap around
        x = torch.cat([x, x], 3)[:, :, :, : n_w + kw - 1]
        y = F.conv2d(x, kernel, None, 1, 0, conv.dilation, conv.groups)[:, :, :n_h, :n_w]
        return y[:, :, :: conv.stride[0], :: conv.stride[1]].flatten()

    jac = torch.autograd.functional.jacobian(
        f, torch.zeros(conv.in_channels * n_h * n_w, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(jac.double(), ord=2))


@pytest.mark.parametrize("index", range(len(CIRCULAR)))
def test_conv_bound_is_the_norm_of_the_circular_convolution(index):
    """Sedghi et al. 2019 (Theorem 6, with the polyphase split for strides): the bound is exactly
    the spectral norm of the circular convolution on the input padded to (H + 2p) x (W + 2p),
    rounded up to the stride and to at least the (dilated) kernel."""
    torch.manual_seed(index)
    args, shape = CIRCULAR[index]
    conv = nn.Conv2d(**args).double()
    if conv.weight.numel() == 2:
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([1.0, -1.0]).view_as(conv.weight))
    graph = compile_model(nn.Sequential(conv, nn.Flatten()), shape)
    op = graph.nodes[1].op
    (ph, pw), (sh, sw) = op.padding, op.stride
    kh = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
    kw = conv.dilation[1] * (conv.kernel_size[1] - 1) + 1
    n_h = -(-max(shape[1] + 2 * ph, kh) // sh) * sh
    n_w = -(-max(shape[2] + 2 * pw, kw) // sw) * sw
    with torch.no_grad():
        bound = float(conv_spectral_bound(op, shape))
    assert bound == pytest.approx(circular_norm(conv, conv.weight.detach(), n_h, n_w), rel=1e-9)
    if conv.weight.numel() == 2:
        assert bound == pytest.approx(math.sqrt(3), rel=1e-9)


def test_residual_conv_bound_is_the_norm_of_the_kernel_plus_identity():
    """``x + conv(x)`` with same padding is the convolution whose kernel has the identity added
    at the centre tap (Hu et al. 2023, eq. 4)."""
    torch.manual_seed(7)
    conv = nn.Conv2d(3, 3, 3, padding=1).double()
    shape = (3, 4, 5)
    graph = compile_model(nn.Sequential(conv, nn.Flatten()), shape)
    kernel = conv.weight.detach().clone()
    kernel[:, :, 1, 1] += torch.eye(3, dtype=torch.float64)
    with torch.no_grad():
        bound = float(conv_spectral_bound(graph.nodes[1].op, shape, residual=True))
        plain = float(conv_spectral_bound(graph.nodes[1].op, shape))
    assert bound == pytest.approx(circular_norm(conv, kernel, 6, 7), rel=1e-9)
    assert plain == pytest.approx(circular_norm(conv, conv.weight.detach(), 6, 7), rel=1e-9)


@pytest.mark.parametrize("args", [
    dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, padding=1),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1),
    dict(in_channels=2, out_channels=2, kernel_size=(1, 3), padding=1),
    dict(in_channels=2, out_channels=2, kernel_size=(3, 1), padding=1),
], ids=["stride", "channels", "padding-rows", "padding-columns"])
def test_a_convolution_that_changes_the_shape_has_no_residual_bound(args):
    conv = nn.Conv2d(**args)
    graph = compile_model(nn.Sequential(conv, nn.Flatten()), (2, 5, 5))
    with pytest.raises(RobustlabError) as err:
        conv_spectral_bound(graph.nodes[1].op, (2, 5, 5), residual=True)
    assert "stride 1" in str(err.value) and str(err.value).endswith(".")
