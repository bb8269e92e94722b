"""The losses against their papers: published defaults, edge values of the hyper-parameters,
closed forms of the shared adversarial terms, numerical contracts (dtype, device, precision), and
the input checks (a RobustlabError naming the bad parameter).

Hand-computed references are plain Python ``math`` on tiny batches; each cites its equation.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from robustlab.errors import RobustlabError
from robustlab.losses import LOSSES, build_loss, per_sample_loss_fn
from robustlab.losses import adversarial as adv
from robustlab.losses._common import PerSampleLoss
from robustlab.losses.ldr import ldr_kl
from robustlab.losses.logit_clip import LogitClip, clip_logits
from robustlab.losses.robust import bootstrap_loss
from robustlab.losses.sparsemax import sparsemax

LOGITS = [[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, -1.0, 3.0], [-2.0, 0.0, 1.5, 0.2]]
TARGETS = [0, 2, 1]  # no sample has the last class: catches one-hot widths taken from the labels
K = 4


def batch(dtype=torch.float64):
    return torch.tensor(LOGITS, dtype=dtype), torch.tensor(TARGETS)


def per_sample(name, z, y, **kwargs):
    return LOSSES.build(name, reduction="none", **kwargs)(z, y)


def softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def each(fn, *rows):
    """``fn`` applied to every sample of the batch, as a float64 tensor."""
    return torch.tensor([fn(*r) for r in zip(*rows)], dtype=torch.float64)


def ce(z, y):
    return -math.log(softmax(z)[y])


def rce(z, y, clip=1e-4):
    return -math.log(clip) * (1 - softmax(z)[y])


def nce(z, y):
    p = softmax(z)
    return math.log(p[y]) / sum(math.log(v) for v in p)


def nfl(z, y, gamma=0.5):
    p = softmax(z)

    def fl(v):
        return -((1 - v) ** gamma) * math.log(v)

    return fl(p[y]) / sum(fl(v) for v in p)


def ldr_d(z, y, margin, normalize=True):
    """``d_k = c 1[k != y] + s_k - s_y`` with ``s = z / mean|z|`` (Zhu et al. 2023, Eq. 4)."""
    s = [v / (sum(abs(w) for w in z) / len(z)) for v in z] if normalize else list(z)
    return [margin * (k != y) + s[k] - s[y] for k in range(len(z))]


def ldr_value(d, lam):
    return lam * math.log(sum(math.exp(v / lam) for v in d) / len(d))


# ----------------------------------------------------------------------------- published defaults


# name, the published setting the defaults must equal, its per-sample loss
DEFAULTS = [
    # Lin et al. 2017, Sec. 5.1: gamma = 2 works best.
    ("focal", "gamma=2", lambda z, y: -((1 - softmax(z)[y]) ** 2) * math.log(softmax(z)[y])),
    # Wang et al. 2019 (CIFAR-10): alpha = 0.1, beta = 1, the label clipped at 1e-4.
    ("sce", "alpha=0.1, beta=1", lambda z, y: 0.1 * ce(z, y) + 1.0 * rce(z, y)),
    # Ma et al. 2020 (CIFAR-10 configs of the reference code): alpha = beta = 1, NFL gamma = 0.5.
    ("nce+rce", "alpha=beta=1", lambda z, y: nce(z, y) + rce(z, y)),
    ("nce+mae", "alpha=beta=1", lambda z, y: nce(z, y) + 1 - softmax(z)[y]),
    ("nfl+rce", "alpha=beta=1, gamma=0.5", lambda z, y: nfl(z, y) + rce(z, y)),
    ("nfl+mae", "alpha=beta=1, gamma=0.5", lambda z, y: nfl(z, y) + 1 - softmax(z)[y]),
]


@pytest.mark.parametrize("name,setting,ref", DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_defaults_are_the_published_settings(name, setting, ref):
    z, y = batch()
    torch.testing.assert_close(per_sample(name, z, y), each(ref, LOGITS, TARGETS), msg=setting)


def test_logit_clip_defaults_to_the_l2_norm():
    """Wei et al. 2023, Eq. 4 clamps the L2 norm of the logit vector."""
    z, _ = batch()
    norms = [math.sqrt(sum(v * v for v in row)) for row in LOGITS]
    expected = torch.tensor([[v * min(1.0, 1.5 / n) for v in row] for row, n in zip(LOGITS, norms)])
    torch.testing.assert_close(clip_logits(z, 1.5), expected.double())


# ----------------------------------------------------------------------------- edge values


def test_apl_and_sce_accept_a_zero_weight():
    """alpha = 0 or beta = 0 are valid weights (Eq. 9 of Ma et al.; Eq. 6 of Wang et al.): the
    combination is then the other term alone."""
    z, y = batch()
    rce_v, nce_v = per_sample("rce", z, y), per_sample("nce", z, y)
    torch.testing.assert_close(per_sample("nce+rce", z, y, alpha=0.0, beta=2.0), 2.0 * rce_v)
    torch.testing.assert_close(per_sample("nce+rce", z, y, alpha=3.0, beta=0.0), 3.0 * nce_v)
    torch.testing.assert_close(per_sample("sce", z, y, alpha=0.0, beta=0.5), 0.5 * rce_v)


def test_sce_passes_its_clip_to_rce():
    z, y = batch()
    expected = each(lambda zi, yi: 0.2 * ce(zi, yi) + rce(zi, yi, clip=1e-2), LOGITS, TARGETS)
    torch.testing.assert_close(per_sample("sce", z, y, alpha=0.2, beta=1.0, clip=1e-2), expected)


def test_ngce_at_q_one_is_nmae():
    """NGCE's q lies in (0, 1]; at q = 1 it is (1 - p_y) / (K - 1), the normalized MAE."""
    z, y = batch()
    torch.testing.assert_close(per_sample("ngce", z, y, q=1.0), per_sample("nmae", z, y))


@pytest.mark.parametrize("p", [1.0, 1.5])
def test_logit_clip_with_a_p_norm_of_one_or_more(p):
    """Any p >= 1 is a norm; the wrapper clips with the p it was given."""
    z, y = batch()
    tau = 1.2
    clipped = []
    for row in LOGITS:
        norm = sum(abs(v) ** p for v in row) ** (1 / p)
        clipped.append([v * min(1.0, tau / norm) for v in row])
    expected = each(ce, clipped, TARGETS)
    torch.testing.assert_close(LogitClip("ce", tau=tau, p=p, reduction="none")(z, y), expected)


# ----------------------------------------------------------------------------- LDR-KL, ALDR-KL


def test_ldr_kl_with_a_margin_and_lam_that_are_not_binary_fractions():
    """float64 logits give the float64 value: the margin and lam are not rounded to float32."""
    z, y = batch()
    got = per_sample("ldr-kl", z, y, lam=0.3, margin=0.3)
    expected = each(lambda zi, yi: ldr_value(ldr_d(zi, yi, 0.3), 0.3), LOGITS, TARGETS)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-14)


def aldr_reference(z, y, lam0, alpha, iterations, margin=1.0):
    """``iterations`` steps of ``lam <- lam0 (1 - KL(softmax(d / lam), 1/K) / (alpha log K))`` from
    ``lam0``, then LDR-KL at ``lam`` minus ``alpha log K / (2 lam0) (lam - lam0)^2`` (Zhu et al.
    2023, Sec. 6)."""
    d = ldr_d(z, y, margin)
    log_k = math.log(len(d))
    lam = lam0
    for _ in range(iterations):
        p = softmax([v / lam for v in d])
        kl = sum(pk * math.log(pk * len(d)) for pk in p)
        lam = lam0 * (1 - kl / (alpha * log_k))
    return ldr_value(d, lam) - alpha * log_k / (2 * lam0) * (lam - lam0) ** 2


@pytest.mark.parametrize("iterations", [1, 2])
def test_aldr_kl_fixed_point_steps_by_hand(iterations):
    z, y = batch()
    got = per_sample("aldr-kl", z, y, lam=0.3, alpha=1.5, margin=0.7, iterations=iterations)
    expected = each(
        lambda zi, yi: aldr_reference(zi, yi, 0.3, 1.5, iterations, margin=0.7), LOGITS, TARGETS
    )
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------------------- bootstrapping


def test_soft_bootstrap_with_a_detached_prediction_has_gradient_beta_times_p_minus_e_y():
    """With t = p held fixed, the loss is CE against beta e_y + (1 - beta) p, so its gradient in z
    is p - (beta e_y + (1 - beta) p) = beta (p - e_y)."""
    z, y = batch()
    z.requires_grad_(True)
    bootstrap_loss(z, y, 0.6, "soft", detach=True).sum().backward()
    p = torch.softmax(z.detach(), 1)
    torch.testing.assert_close(z.grad, 0.6 * (p - torch.nn.functional.one_hot(y, K)))


# ----------------------------------------------------------------------------- sparsemax


def test_sparsemax_along_any_dim_of_a_3d_tensor():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    for dim in (0, 1, 2, -1):
        moved = z.movedim(dim, -1)
        rows = moved.reshape(-1, moved.shape[-1])
        expected = sparsemax(rows).reshape(moved.shape).movedim(-1, dim)
        torch.testing.assert_close(sparsemax(z, dim), expected)
        torch.testing.assert_close(sparsemax(z, dim).sum(dim), torch.ones_like(z.sum(dim)))


def test_sparsemax_and_its_loss_are_exact_under_a_large_shift_in_float32():
    """sparsemax(z + c) = sparsemax(z) and the loss is shift invariant (Martins & Astudillo 2016,
    Prop. 2): computing on z - max z keeps float32 exact here, where z + c itself is exact.

    z = (0.5, 0.25, -0.25, 0, 0.125): support {0, 1, 3, 4}, tau = (0.875 - 1) / 4 = -1/32."""
    small = [0.5, 0.25, -0.25, 0.0, 0.125]
    z = torch.tensor([small], dtype=torch.float32) + 1e6  # every entry representable
    p = torch.tensor([[0.53125, 0.28125, 0.0, 0.03125, 0.15625]])
    torch.testing.assert_close(sparsemax(z), p, rtol=0, atol=1e-6)
    tau = -1 / 32
    half_sq = 0.5 * sum(v * v - tau * tau for v, pv in zip(small, p[0].tolist()) if pv > 0)
    expected = torch.tensor([-small[y] + half_sq + 0.5 for y in range(5)])
    got = per_sample("sparsemax", z.expand(5, 5), torch.arange(5))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- adversarial terms


def test_kl_and_squared_distance_by_hand():
    """``KL(p || q)`` with p the reference (first argument), and ``||p - q||^2``."""
    a, _ = batch()
    b = 0.5 * a.roll(1, 1)
    p = [softmax(r) for r in LOGITS]
    q = [softmax([0.5 * v for v in r[-1:] + r[:-1]]) for r in LOGITS]
    kl = [sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)]
    se = [sum((pi - qi) ** 2 for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)]
    # the adversarial terms compute in float32
    torch.testing.assert_close(adv.kl_divergence(a, b), torch.tensor(kl))
    torch.testing.assert_close(adv.squared_distance(a, b), torch.tensor(se))
    assert (
        adv.divergence("kl") is adv.kl_divergence and adv.divergence("se") is adv.squared_distance
    )


def test_smooth_labels_per_sample_confidence():
    """``confidence`` on y and ``(1 - confidence) / (K - 1)`` elsewhere, one value per row."""
    y = torch.tensor(TARGETS)
    conf = [0.7, 0.4, 1.0]
    expected = [[c if k == t else (1 - c) / (K - 1) for k in range(K)] for c, t in zip(conf, y)]
    got = adv.smooth_labels(y, K, torch.tensor(conf))
    torch.testing.assert_close(got, torch.tensor(expected))
    torch.testing.assert_close(adv.smooth_labels(y, K, 0.7)[0], torch.tensor(expected[0]))


def test_one_vs_rest_by_hand():
    """``log(1 + e^{-z_y}) + sum_{k != y} log(1 + e^{z_k})`` (Kanai et al. 2023)."""
    z, y = batch()

    def ovr(zi, yi):
        return sum(math.log1p(math.exp(-v if k == yi else v)) for k, v in enumerate(zi))

    torch.testing.assert_close(adv.one_vs_rest(z, y), each(ovr, LOGITS, TARGETS).float())


def test_kl_dro_weights_are_n_softmax_of_losses_over_tau():
    """DONE (Zhang et al. 2024): w_i = exp(l_i / tau) / mean_j exp(l_j / tau)."""
    losses = torch.tensor([0.2, 1.5, 0.7, 3.0], dtype=torch.float64)
    e = [math.exp(v / 0.5) for v in losses.tolist()]
    torch.testing.assert_close(
        adv.kl_dro_weights(losses, 0.5), torch.tensor([4 * v / sum(e) for v in e])
    )
    # an outside normaliser replaces log mean_j exp(l_j / tau)
    got = adv.kl_dro_weights(losses, 0.5, log_normalizer=torch.tensor(1.0))
    torch.testing.assert_close(got, torch.tensor([v / math.e for v in e]))


def kkt_worst_case(v, q, r):
    """argmax_p <p, v> over the simplex subject to KL(q || p) <= r, from the primal optimality
    conditions: p_i proportional to q_i / (eta - v_i), eta > max v chosen so that KL(q || p) = r."""
    s = q > 0
    top = v[s].max()

    def p_of(eta):
        w = np.where(s, q / np.maximum(eta - v, 1e-300), 0.0)
        return w / w.sum()

    def excess(eta):
        p = p_of(eta)
        return float((q[s] * np.log(q[s] / p[s])).sum()) - r

    hi = top + 1.0
    while excess(hi) > 0:
        hi = top + 2 * (hi - top)
    eta = brentq(excess, top + 1e-12, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    return p_of(eta)


# losses, alpha, the greedy q on (losses, worst point): 1/N on the largest losses, alpha on the worst
HR_CASES = [
    ([0.3, 1.2, 0.7, 2.0], 0.25, [0.0, 0.25, 0.25, 0.25, 0.25]),
    ([0.3, 1.2, 0.7, 2.0], 0.0, [0.25, 0.25, 0.25, 0.25, 0.0]),
    ([0.3, 1.2, 0.7, 2.0], 0.5, [0.0, 0.25, 0.0, 0.25, 0.5]),
]


@pytest.mark.parametrize("losses,alpha,q", HR_CASES)
@pytest.mark.parametrize("r", [0.01, 0.5, 1.0])
def test_hr_weights_solve_the_kl_ball_worst_case(losses, alpha, q, r):
    """Bennouna et al. 2023: for the greedy q, the weights maximise the expected loss over the KL
    ball of radius r around q (checked against the primal optimality conditions); they lie on
    the sphere KL(q || p) = r and sum to one."""
    v = np.array([*losses, max(losses)])
    p, p_w = adv.hr_weights(torch.tensor(losses, dtype=torch.float64), alpha, r)
    got = np.append(p.numpy(), float(p_w))
    np.testing.assert_allclose(got, kkt_worst_case(v, np.array(q), r), rtol=1e-9, atol=1e-12)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    on = np.array(q) > 0
    assert float((np.array(q)[on] * np.log(np.array(q)[on] / got[on])).sum()) == pytest.approx(r)


def test_hr_weights_without_a_ball_are_the_greedy_q():
    """r = 0: p = q, i.e. 1/N on the largest (1 - alpha) N losses and alpha on the worst point."""
    losses = torch.tensor([0.3, 1.2, 0.7, 2.0], dtype=torch.float64)
    p, p_w = adv.hr_weights(losses, 0.5, 0.0)
    torch.testing.assert_close(p, torch.tensor([0.0, 0.25, 0.0, 0.25], dtype=torch.float64))
    p, p_w = adv.hr_weights(losses, 0.1, 0.0)
    torch.testing.assert_close(p, torch.tensor([0.15, 0.25, 0.25, 0.25], dtype=torch.float64))
    assert float(p_w) == pytest.approx(0.1, abs=1e-15)  # not 0.1 rounded to float32


def test_hr_weights_when_q_sits_on_the_largest_loss_only():
    """All of q on max-valued entries: every p in the ball puts its mass there as well, so p = q."""
    losses = torch.tensor([3.0, 3.0, 1.0, 0.0], dtype=torch.float64)
    p, p_w = adv.hr_weights(losses, 0.5, 0.7)
    torch.testing.assert_close(p, torch.tensor([0.25, 0.25, 0.0, 0.0], dtype=torch.float64))
    assert float(p_w) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("r", [0.0, 0.5])
def test_hr_weights_have_the_dtype_of_the_losses(r):
    p, p_w = adv.hr_weights(torch.tensor([0.3, 1.2, 0.7, 2.0]), 0.25, r)
    assert p.dtype == p_w.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,name",
    [({"alpha": 1.0, "r": 0.1}, "alpha"), ({"alpha": 1.5, "r": 0.1}, "alpha"),
     ({"alpha": 0.1, "r": -1.0}, "r")],
)  # fmt: skip
def test_hr_weights_reject_bad_parameters(kwargs, name):
    with pytest.raises(RobustlabError, match=rf"\b{name}\b"):
        adv.hr_weights(torch.tensor([0.3, 1.2]), **kwargs)


def test_kl_dro_weights_and_divergence_reject_bad_input():
    with pytest.raises(RobustlabError, match=r"\btau\b"):
        adv.kl_dro_weights(torch.tensor([0.3, 1.2]), 0.0)
    with pytest.raises(RobustlabError, match="'js'"):
        adv.divergence("js")


# ----------------------------------------------------------------------------- numerical contracts


def test_no_warnings():
    """No deprecated calls (e.g. an implicit softmax dimension) on the loss paths."""
    z, y = batch(torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in LOSSES.names():
            LOSSES.build(name)(z, y)
        b = z.flip(1)
        for fn in (adv.kl_divergence, adv.squared_distance):
            fn(z, b)
        for fn in (adv.boosted_ce, adv.true_class_prob, adv.one_vs_rest, adv.logit_margin):
            fn(z, y)
        adv.soft_cross_entropy(z, adv.smooth_labels(y, K, 0.8))
        bootstrap_loss(z, y, 0.5, "soft", detach=True)
    assert [str(w.message) for w in caught] == []


def test_losses_compute_on_the_device_of_the_logits():
    """Every tensor a loss creates lives on the logits' device. Checked on the meta device, which
    refuses to mix with CPU tensors as a GPU does, so the check runs without one."""
    z = torch.empty(5, K, dtype=torch.float64, device="meta")
    y = torch.empty(5, dtype=torch.long, device="meta")
    for name in LOSSES.names():
        loss = LOSSES.build(name, reduction="none")
        if isinstance(loss, PerSampleLoss):  # logit-clip checks label values, not possible on meta
            assert loss.per_sample(z, y).device.type == "meta", name
    assert LOSSES.build("poly", epsilon=[1.0, 0.5]).per_sample(z, y).device.type == "meta"
    assert ldr_kl(z, 0.3).device.type == "meta"
    assert sparsemax(z).device.type == "meta"
    assert bootstrap_loss(z, y, 0.3, "hard", detach=True).device.type == "meta"
    assert adv.smooth_labels(y, K, 0.9).device.type == "meta"


# ----------------------------------------------------------------------------- input checks


def test_bad_logits_and_targets_are_named_in_the_error():
    _, y = batch()
    with pytest.raises(RobustlabError, match=r"\blist\b"):
        LOSSES.build("ce")(LOGITS, y)
    with pytest.raises(RobustlabError, match=r"\(4,\)"):  # the shape it got
        LOSSES.build("ce")(torch.zeros(4), y)
    with pytest.raises(RobustlabError, match=r"\btargets\b"):
        LOSSES.build("ce")(torch.zeros(3, K), torch.tensor([0, 1, 7]))


def test_build_loss_errors_name_what_was_given():
    with pytest.raises(RobustlabError, match=r"\bint\b"):
        build_loss(3)
    with pytest.raises(RobustlabError, match=r"\bGCE\b"):
        build_loss(build_loss("gce"), q=0.5)


def test_per_sample_loss_fn():
    """A name is built with reduction "none"; a module is returned as it is."""
    z, y = batch()
    fn = per_sample_loss_fn("gce")
    torch.testing.assert_close(fn(z, y), per_sample("gce", z, y))
    module = LOSSES.build("mae", reduction="none")
    assert per_sample_loss_fn(module) is module
