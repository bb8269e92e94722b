"""PREDICT and CERTIFY of randomized smoothing (Cohen, Rosenfeld & Kolter 2019, Section 3.2) at the
edges of their decisions, their statistics against scipy, their reproducibility from the seed,
and the ``smoothing`` certifier against the classifier it wraps.

The decisions have exact edges: PREDICT returns the top class iff the binomial p-value is
``<= alpha``; CERTIFY abstains unless ``p_A > 1/2`` (then the radius ``sigma Phi^-1(p_A)`` would be
0); a sample is certified at ``eps`` iff its radius is ``>= eps``. Each is tested at equality.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

import robustlab.certify.smoothing as smoothing_module
from robustlab.certify import SmoothedClassifier, certify
from robustlab.certify.certifier import CERTIFIERS
from robustlab.certify.smoothing import (
    ABSTAIN,
    average_certified_radius,
    binomial_test_half,
    certified_accuracy_at,
    clopper_pearson_lower,
)


class Halfspace(nn.Module):
    """Two classes: 1 where ``w . x + b > 0``; records the batch size of every call."""

    def __init__(self, w, b):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float32))
        self.b = nn.Parameter(torch.tensor(float(b)))
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


class Constant(nn.Module):
    """Always class ``k`` out of ``n``."""

    def __init__(self, k: int, n: int = 3):
        super().__init__()
        self.k, self.n = k, n
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((x.shape[0],), self.k), self.n).float()


def boundary_points(m: int = 24) -> torch.Tensor:
    """Points on the boundary of ``Halfspace([1, -1], 0)``: every noisy draw is a coin flip."""
    t = torch.linspace(0.05, 0.95, m)
    return torch.stack([t, t], 1)


@pytest.mark.parametrize("k,n", [(1, 1), (1, 10), (2, 10), (1, 500), (499, 500), (30_000, 100_000)])
def test_clopper_pearson_matches_scipy_at_small_counts(k, n):
    """The one-sided ``1 - alpha`` bound is the two-sided exact interval's lower end at level
    ``1 - 2 alpha`` (scipy), also for one success, and for counts of a narrow integer type."""
    alpha = 0.005
    expected = binomtest(k, n).proportion_ci(1 - 2 * alpha, method="exact").low
    for counts in (np.array([k]), np.array([k], dtype=np.int16 if k < 2**15 else np.int32)):
        got = clopper_pearson_lower(counts, n, alpha)
        assert got[0] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert clopper_pearson_lower(np.array([0, 0]), n, alpha).tolist() == [0.0, 0.0]


def test_binomial_test_of_no_draws_is_one():
    """With ``n_A + n_B = 0`` there is no evidence: p-value 1 (never below any alpha)."""
    p = binomial_test_half(np.array([0, 3, 5]), np.array([0, 3, 5]))
    assert p.dtype == np.float64
    assert p.tolist() == [1.0, pytest.approx(0.25), pytest.approx(0.0625)]


def test_predict_returns_the_class_when_the_p_value_equals_alpha():
    """PREDICT: ``if BinomPValue(n_A, n_A + n_B, 1/2) <= alpha return c_A``. Five unanimous draws
    have p-value 2 / 2**5 = 0.0625 exactly."""
    smoothed = SmoothedClassifier(Constant(2), 3, 0.5)
    x = torch.rand(3, 4)
    assert smoothed.predict(x, n=5, alpha=0.0625).tolist() == [2, 2, 2]
    assert smoothed.predict(x, n=5, alpha=0.0624).tolist() == [ABSTAIN] * 3


def test_certify_abstains_when_the_lower_bound_is_exactly_one_half(monkeypatch):
    """CERTIFY: ``if p_A > 1/2 return (c_A, sigma Phi^-1(p_A)) else abstain`` -- at ``p_A = 1/2``
    the radius would be 0, and the paper abstains."""
    smoothed = SmoothedClassifier(Constant(1), 3, 0.5)
    x = torch.rand(2, 4)
    monkeypatch.setattr(smoothing_module, "clopper_pearson_lower",
                        lambda k, n, alpha: np.array([0.5, 0.75]))
    cert = smoothed.certify(x, n0=5, n=10)
    assert cert.prediction.tolist() == [ABSTAIN, 1]
    assert cert.radius.tolist() == [0.0, pytest.approx(0.5 * norm.ppf(0.75))]
    assert cert.radius.dtype == x.dtype and cert.p_lower.dtype == torch.float64


def test_certify_radius_is_sigma_times_the_normal_quantile_of_the_cp_bound():
    """``radius = sigma Phi^-1(p_A)``, ``p_A`` the ``alpha`` quantile of Beta(n_A, n - n_A + 1),
    both computed here with scipy from the counts the classifier reports."""
    model = Halfspace([1.0, -2.0], 0.3)
    x = torch.tensor([[0.9, 0.1], [0.5, 0.4], [0.2, 0.6]])
    sigma, n, alpha = 0.3, 400, 0.05
    cert = SmoothedClassifier(model, 2, sigma, seed=7).certify(x, n0=20, n=n, alpha=alpha)
    counts = cert.counts.numpy()
    p_class = beta.ppf(alpha, counts, n - counts + 1)  # (N, K): the bound for each class
    ok = cert.prediction.numpy() != ABSTAIN
    assert ok.any() and (~ok).any()
    p_a = p_class[ok, cert.prediction.numpy()[ok]]
    np.testing.assert_allclose(cert.p_lower.numpy()[ok], p_a, rtol=1e-12)
    assert (p_a > 0.5).all() and (cert.p_lower.numpy()[~ok] <= 0.5).all()
    # an abstained input's bound is that of the class guessed from the n0 draws, one of the two
    assert np.isclose(p_class[~ok], cert.p_lower.numpy()[~ok, None], rtol=1e-12).any(1).all()
    np.testing.assert_allclose(cert.radius.numpy()[ok], sigma * norm.ppf(p_a), rtol=1e-6)
    assert (cert.radius.numpy()[~ok] == 0).all()


def test_the_noise_comes_from_the_seed_alone():
    """Selection (n0 draws) and estimation (n draws) both use the classifier's seeded generator:
    the global random state does not change any result. On the boundary each draw is a coin flip,
    so an unseeded draw would change the counts and the guesses."""
    x = boundary_points()
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        smoothed = SmoothedClassifier(Halfspace([1.0, -1.0], 0.0), 2, 0.5, seed=11)
        cert = smoothed.certify(x, n0=1, n=6, alpha=0.4)
        torch.manual_seed(global_seed + 10)
        pred = smoothed.predict(x, n=3, alpha=0.3)
        results.append((cert.prediction, cert.counts, cert.p_lower, pred))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_noise_batches_cap_the_model_evaluations_per_call():
    """At most ``noise_batch`` evaluations per model call (at least one draw per input), and
    ``n`` draws per input in all."""
    model = Halfspace([1.0, -1.0], 0.0)
    x = torch.rand(5, 2)
    counts = SmoothedClassifier(model, 2, 0.5, noise_batch=13).sample_counts(x, 7)
    assert (counts.sum(1) == 7).all()
    assert max(model.calls) <= 13 and sum(model.calls) == 5 * 7
    model.calls.clear()
    SmoothedClassifier(model, 2, 0.5, noise_batch=3).sample_counts(x, 4)  # fewer than the inputs
    assert model.calls == [5, 5, 5, 5]


class Recorder:
    """Stands in for a Rich progress display: records tasks and their progress."""

    def __init__(self):
        self.tasks: dict[int, dict] = {}

    def add_task(self, description, total=None):
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "done": 0,
                                       "removed": False}
        return len(self.tasks) - 1

    def update(self, task, advance=0):
        self.tasks[task]["done"] += advance

    def remove_task(self, task):
        self.tasks[task]["removed"] = True


def test_progress_follows_every_phase_on_the_callers_display():
    smoothed = SmoothedClassifier(Halfspace([1.0, -1.0], 0.0), 2, 0.5, noise_batch=4)
    x = torch.rand(2, 2)
    bar = Recorder()
    smoothed.certify(x, n0=3, n=9, bar=bar)
    smoothed.predict(x, n=5, bar=bar)
    smoothed.sample_counts(x, 2, bar=bar)
    phases = [(t["description"].split()[0], t["total"], t["done"], t["removed"])
              for t in bar.tasks.values()]
    assert phases == [("select", 3, 3, True), ("certify", 9, 9, True), ("predict", 5, 5, True),
                      ("noise", 2, 2, True)]
    assert all("(2 inputs)" in t["description"] for t in bar.tasks.values())


@pytest.mark.parametrize("progress", [False, True])
def test_own_progress_bar_is_drawn_only_when_asked_and_vanishes(monkeypatch, progress):
    seen = []

    class Bar(Recorder):
        def __init__(self, enabled, transient):
            super().__init__()
            seen.append((enabled, transient))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(smoothing_module, "progress_bar", Bar)
    kwargs = {"progress": True} if progress else {}
    SmoothedClassifier(Halfspace([1.0, -1.0], 0.0), 2, 0.5, **kwargs).sample_counts(
        torch.rand(2, 2), 3)
    assert seen == [(progress, True)]


def test_paper_defaults():
    """Cohen et al. 2019, Section 4: n0 = 100, n = 100,000, alpha = 0.001; sigma 0.25 is the
    smallest of their noise levels."""
    cert = inspect.signature(SmoothedClassifier.certify).parameters
    pred = inspect.signature(SmoothedClassifier.predict).parameters
    assert (cert["n0"].default, cert["n"].default, cert["alpha"].default) == (100, 100_000, 0.001)
    assert (pred["n"].default, pred["alpha"].default) == (100_000, 0.001)
    defaults = CERTIFIERS.get("smoothing").defaults
    assert {k: defaults[k] for k in ("sigma", "n0", "n", "alpha")} == {
        "sigma": 0.25, "n0": 100, "n": 100_000, "alpha": 0.001}


def test_certified_accuracy_counts_a_radius_equal_to_the_level():
    radius = torch.tensor([0.25, 0.5, 0.49, 1.0])
    correct = torch.tensor([True, True, True, False])
    assert certified_accuracy_at(radius, correct, [0.25, 0.5]) == {"0.25": 0.75, "0.5": 0.25}


def test_the_smoothing_certifier_is_certify_of_the_smoothed_classifier():
    """``certify(..., "smoothing", ...)`` gives the SmoothedClassifier's own CERTIFY with the same
    options and seed: right = smoothed prediction equals the label, abstentions counted, radius 0
    where wrong, certified iff right and radius >= eps (at equality too)."""
    model = Halfspace([1.0, -1.0], 0.0)
    torch.manual_seed(0)
    x = torch.cat([boundary_points(8), torch.tensor([[0.9, 0.1], [0.1, 0.8], [0.7, 0.2]])])
    y = torch.tensor([0, 1] * 4 + [1, 1, 1])  # the last-but-one is far on the wrong side
    opts = dict(sigma=0.4, n0=4, n=30, alpha=0.2, noise_batch=7)
    ref = SmoothedClassifier(model, 2, 0.4, noise_batch=7, seed=5).certify(
        x, n0=4, n=30, alpha=0.2)
    right = ref.prediction == y
    assert right.any() and (~right).any() and (ref.prediction == ABSTAIN).any()
    eps = float(ref.radius[right].max())  # one sample's radius exactly: certified at equality
    res = certify(model, (x, y), "smoothing", f"l2:{eps!r}", batch_size=64, seed=5, **opts)
    assert torch.equal(res.extra["smoothed_correct"], right)
    assert torch.equal(res.extra["abstained"], ref.prediction == ABSTAIN)
    assert torch.equal(res.radius, torch.where(right, ref.radius, torch.zeros_like(ref.radius)))
    assert torch.equal(res.certified, right & (ref.radius >= eps))
    assert int(res.certified.sum()) >= 1
    s = res.summary
    assert s["smoothed_accuracy"] == pytest.approx(float(right.float().mean()))
    assert s["abstain_rate"] == pytest.approx(float((ref.prediction == ABSTAIN).float().mean()))
    assert s["average_certified_radius"] == pytest.approx(
        average_certified_radius(res.radius, right))
    assert s["certified_accuracy_at"] == certified_accuracy_at(res.radius, right,
                                                               [0.0, 0.25, 0.5, 0.75, 1.0])
