"""Every loss against a value computed by hand (plain Python math) on a small batch."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab.errors import RobustlabError
from robustlab.losses import LOSSES, build_loss

LOGITS = [[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, -1.0, 3.0], [-2.0, 0.0, 1.5, 0.2]]
TARGETS = [0, 2, 1]
K = 4


def softmax(z: list[float]) -> list[float]:
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def focal(p: float, gamma: float) -> float:
    return -((1 - p) ** gamma) * math.log(p)


def ce(z, y):
    return -math.log(softmax(z)[y])


def mae(z, y):
    return 1 - softmax(z)[y]


def gce(z, y, q=0.7):
    return (1 - softmax(z)[y] ** q) / q


def rce(z, y, clip=1e-4):
    p = softmax(z)
    label = [1.0 if k == y else clip for k in range(len(z))]  # one-hot clipped to [clip, 1]
    return -sum(pk * math.log(lk) for pk, lk in zip(p, label))


def nce(z, y):
    p = softmax(z)
    return math.log(p[y]) / sum(math.log(v) for v in p)


def nfl(z, y, gamma=0.5):
    p = softmax(z)
    return focal(p[y], gamma) / sum(focal(v, gamma) for v in p)


def ngce(z, y, q=0.7):
    p = softmax(z)
    return (1 - p[y] ** q) / (len(z) - sum(v**q for v in p))


def nmae(z, y):
    p = softmax(z)
    return (1 - p[y]) / sum(1 - v for v in p)


def bootstrap(z, y, beta, hard):
    p = softmax(z)
    t = [float(k == p.index(max(p))) for k in range(len(z))] if hard else p
    return -sum((beta * (k == y) + (1 - beta) * t[k]) * math.log(p[k]) for k in range(len(z)))


def comp_sum(z, y, tau):
    u = sum(math.exp(z[k] - z[y]) for k in range(len(z)) if k != y)
    return math.log1p(u) if tau == 1 else ((1 + u) ** (1 - tau) - 1) / (1 - tau)


def ldr_kl(z, y, lam, margin=1.0, normalize=True):
    s = [v / (sum(abs(w) for w in z) / len(z)) for v in z] if normalize else list(z)
    d = [margin * (k != y) + s[k] - s[y] for k in range(len(z))]
    return lam * math.log(sum(math.exp(v / lam) for v in d) / len(z))


def clipped(z, tau):
    norm = math.sqrt(sum(v * v for v in z))
    return [v * min(1.0, tau / norm) for v in z]


def apl(active, passive, alpha, beta):
    return lambda z, y: alpha * active(z, y) + beta * passive(z, y)


# name, kwargs, reference per-sample function
CASES = [
    ("ce", {}, ce),
    ("focal", {"gamma": 2.0}, lambda z, y: focal(softmax(z)[y], 2.0)),
    (
        "label-smoothing",
        {"smoothing": 0.1},
        lambda z, y: (
            -sum((0.9 * (k == y) + 0.1 / len(z)) * math.log(softmax(z)[k]) for k in range(len(z)))
        ),
    ),
    ("poly", {"epsilon": 1.0}, lambda z, y: ce(z, y) + mae(z, y)),
    ("poly", {"epsilon": [1.0, 0.5]}, lambda z, y: ce(z, y) + mae(z, y) + 0.5 * mae(z, y) ** 2),
    ("mae", {}, mae),
    ("gce", {"q": 0.7}, gce),
    ("rce", {}, rce),
    ("sce", {"alpha": 0.1, "beta": 1.0}, lambda z, y: 0.1 * ce(z, y) + rce(z, y)),
    ("soft-bootstrap", {"beta": 0.95}, lambda z, y: bootstrap(z, y, 0.95, hard=False)),
    ("hard-bootstrap", {"beta": 0.8}, lambda z, y: bootstrap(z, y, 0.8, hard=True)),
    ("nce", {}, nce),
    ("nfl", {"gamma": 0.5}, nfl),
    ("ngce", {"q": 0.7}, ngce),
    ("nmae", {}, nmae),
    ("nce+rce", {"alpha": 2.0, "beta": 3.0}, apl(nce, rce, 2.0, 3.0)),
    ("nce+mae", {"alpha": 2.0, "beta": 3.0}, apl(nce, mae, 2.0, 3.0)),
    ("nfl+rce", {"alpha": 2.0, "beta": 3.0}, apl(nfl, rce, 2.0, 3.0)),
    ("nfl+mae", {"alpha": 2.0, "beta": 3.0}, apl(nfl, mae, 2.0, 3.0)),
    ("ngce+rce", {"alpha": 2.0, "beta": 3.0}, apl(ngce, rce, 2.0, 3.0)),
    ("ngce+mae", {"alpha": 2.0, "beta": 3.0}, apl(ngce, mae, 2.0, 3.0)),
    ("comp-sum", {"tau": 0.5}, lambda z, y: comp_sum(z, y, 0.5)),
    ("comp-sum", {"tau": 1.5}, lambda z, y: comp_sum(z, y, 1.5)),
    ("ldr-kl", {"lam": 0.5}, lambda z, y: ldr_kl(z, y, 0.5)),
    ("ldr-kl", {"lam": 2.0, "normalize": False}, lambda z, y: ldr_kl(z, y, 2.0, normalize=False)),
    ("logit-clip", {"tau": 1.0}, lambda z, y: ce(clipped(z, 1.0), y)),
    (
        "logit-clip",
        {"base": "gce", "tau": 2.0, "q": 0.5},
        lambda z, y: gce(clipped(z, 2.0), y, 0.5),
    ),
]


def batch(dtype=torch.float64):
    return torch.tensor(LOGITS, dtype=dtype), torch.tensor(TARGETS)


@pytest.mark.parametrize("name,kwargs,ref", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_loss_matches_hand_computed_value(name, kwargs, ref):
    z, y = batch()
    expected = torch.tensor([ref(zi, yi) for zi, yi in zip(LOGITS, TARGETS)], dtype=torch.float64)
    per_sample = LOSSES.build(name, reduction="none", **kwargs)(z, y)
    assert per_sample.shape == (3,)
    torch.testing.assert_close(per_sample, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(LOSSES.build(name, **kwargs)(z, y), expected.mean())
    torch.testing.assert_close(LOSSES.build(name, reduction="sum", **kwargs)(z, y), expected.sum())


def test_sparsemax_loss_hand_computed():
    # z = (1, 0.5, -1): support {0, 1}, tau = (1.5 - 1) / 2 = 0.25, sparsemax = (0.75, 0.25, 0).
    z = torch.tensor([[1.0, 0.5, -1.0]] * 3, dtype=torch.float64)
    loss = LOSSES.build("sparsemax", reduction="none")(z, torch.tensor([0, 1, 2]))
    # -z_y + 1/2 [(1 - 1/16) + (1/4 - 1/16)] + 1/2 = -z_y + 1.0625
    torch.testing.assert_close(loss, torch.tensor([0.0625, 0.5625, 2.0625], dtype=torch.float64))


def test_aldr_kl_is_the_max_over_lambda():
    """ALDR-KL = max_lam LDR-KL_lam - alpha log K / (2 lam0) (lam - lam0)^2, checked on a grid."""
    z, y = batch()
    for lam0, alpha in ((1.0, 2.0), (0.3, 1.5)):
        loss = LOSSES.build("aldr-kl", lam=lam0, alpha=alpha, iterations=50, reduction="none")
        got = loss(z, y)
        # lam = lam0 (1 - KL / (alpha log K)) lies in [lam0 (1 - 1 / alpha), lam0] as KL <= log K
        grid = torch.linspace(lam0 * (1 - 1 / alpha), lam0, 4001, dtype=torch.float64)
        price = alpha * math.log(K) / (2 * lam0)
        for i, (zi, yi) in enumerate(zip(LOGITS, TARGETS)):
            values = [ldr_kl(zi, yi, float(lam)) - price * (float(lam) - lam0) ** 2 for lam in grid]
            assert abs(float(got[i]) - max(values)) < 1e-6
    # with lam0 fixed by a huge price, ALDR-KL is LDR-KL at lam0
    stiff = LOSSES.build("aldr-kl", lam=0.7, alpha=1e9, reduction="none")(z, y)
    torch.testing.assert_close(stiff, LOSSES.build("ldr-kl", lam=0.7, reduction="none")(z, y))


def test_every_registered_loss_is_documented_and_checked_by_a_case():
    described = LOSSES.describe()
    assert all(described[name] for name in LOSSES.names())
    covered = {c[0] for c in CASES} | {"sparsemax", "aldr-kl"}
    assert covered == set(LOSSES.names())


@pytest.mark.parametrize("name", LOSSES.names())
def test_finite_gradients_for_extreme_logits(name):
    z = torch.tensor(
        [[1e4, -1e4, 0.0, 5.0], [-1e4, 1e4, 0.0, -5.0], [1e4, 1e4, -1e4, 0.0]], requires_grad=True
    )
    y = torch.tensor([0, 0, 2])
    loss = LOSSES.build(name)(z, y)
    loss.backward()
    assert torch.isfinite(loss), name
    assert torch.isfinite(z.grad).all(), name


def test_half_precision_logits_are_computed_in_float32():
    z, y = batch(torch.bfloat16)
    out = LOSSES.build("nce+rce")(z, y)
    assert out.dtype == torch.float32


def test_build_loss_accepts_names_and_modules():
    gce = build_loss("GCE", q=0.5)
    assert gce.q == 0.5
    assert build_loss(gce) is gce
    with pytest.raises(RobustlabError, match="Unknown loss 'nope'"):
        build_loss("nope")
    with pytest.raises(RobustlabError, match="takes no argument 'gamma'"):
        build_loss("gce", gamma=2.0)
    with pytest.raises(RobustlabError, match="Cannot build loss 'nce\\+rce'"):
        build_loss("nce+rce", q=0.5)  # extra arguments go to NCE, which has none
    with pytest.raises(RobustlabError, match="apply to a loss given by name"):
        build_loss(gce, q=0.1)


@pytest.mark.parametrize(
    "logits,target,message",
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), "shape \\(N, K\\)"),
        (torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), "at least 2 classes"),
        (torch.zeros(3, 4), torch.tensor([0, 1, 4]), "in \\[0, 4\\)"),
        (torch.zeros(3, 4), torch.zeros(3), "integer tensor"),
        (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), "shape \\(3,\\)"),
        (torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long), "float tensor"),
    ],
)
def test_bad_inputs_raise_one_sentence(logits, target, message):
    with pytest.raises(RobustlabError, match=message):
        LOSSES.build("gce")(logits, target)


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("ce", {"reduction": "avg"}, "Unknown reduction 'avg'"),
        ("gce", {"q": 0.0}, "q must be in \\(0, 1\\]"),
        ("gce", {"q": 1.5}, "q must be in \\[0, 1\\]"),
        ("focal", {"gamma": -1.0}, "gamma must be >= 0"),
        ("poly", {"epsilon": []}, "epsilon must be"),
        ("aldr-kl", {"alpha": 1.0}, "alpha must be > 1"),
        ("logit-clip", {"tau": 0.0}, "tau must be > 0"),
        ("logit-clip", {"p": 0.5}, "p must be >= 1"),
        ("comp-sum", {"tau": -1.0}, "tau must be >= 0"),
        ("rce", {"clip": 1.0}, "clip must be in \\(0, 1\\)"),
        # the error names the parameter (as a word: "XXqXX" or "Q" would not do)
        ("label-smoothing", {"smoothing": -0.1}, r"\bsmoothing\b"),
        ("nfl", {"gamma": -1.0}, r"\bgamma\b"),
        ("ngce", {"q": 1.5}, r"\bq\b"),
        ("ngce", {"q": 0.0}, r"\bq\b"),
        ("sce", {"alpha": -1.0}, r"\balpha\b"),
        ("sce", {"beta": -1.0}, r"\bbeta\b"),
        ("nce+rce", {"alpha": -1.0}, r"\balpha\b"),
        ("nce+rce", {"beta": -1.0}, r"\bbeta\b"),
        ("soft-bootstrap", {"beta": 1.5}, r"\bbeta\b"),
        ("hard-bootstrap", {"beta": -0.5}, r"\bbeta\b"),
        ("ldr-kl", {"lam": 0.0}, r"\blam\b"),
        ("ldr-kl", {"margin": -1.0}, r"\bmargin\b"),
        ("aldr-kl", {"alpha": -1.0}, r"\balpha\b"),
        ("aldr-kl", {"iterations": 0}, r"\biterations\b"),
        ("logit-clip", {"p": 0.0}, r"\bp\b"),
        # PolyLoss coefficients are finite numbers, not booleans
        ("poly", {"epsilon": float("inf")}, r"\bepsilon\b"),
        ("poly", {"epsilon": [1.0, float("-inf")]}, r"\bepsilon\b"),
        ("poly", {"epsilon": [True]}, r"\bepsilon\b"),
        ("poly", {"epsilon": ["1.0"]}, r"\bepsilon\b"),
    ],
)
def test_bad_hyper_parameters_raise(name, kwargs, message):
    with pytest.raises(RobustlabError, match=message):
        LOSSES.build(name, **kwargs)
