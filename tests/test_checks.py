"""Attack-failure checks: each fires on a model built to trigger it and stays silent on a normal
model."""

from __future__ import annotations

import pytest
import torch
from _attack_models import Hardening, Noisy, Quantized, data, linear_model

from robustlab.evaluation.checks import (
    black_box_findings,
    black_box_share,
    check_certified_not_broken,
    check_gradients,
    check_randomness,
    eps_monotonicity_findings,
    eps_monotonicity_from_curves,
    monotonicity_share,
    run_checks,
)
from robustlab.evaluation.findings import MAX_INDICES, THRESHOLDS
from robustlab.threat import Threat


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    x = data(60, 12, seed=3)
    normal = linear_model(d=12, k=3, seed=5)
    y = normal(x).argmax(1)
    return x, y, normal


def _flags(checks):
    return {c.name: c.flag for c in checks}


def test_normal_model_raises_nothing(setup):
    x, y, normal = setup
    checks = run_checks(normal, x, y, [Threat("linf", 0.1)], probe_size=30, probe_steps=20,
                        probe_queries=150)  # fmt: skip
    assert not any(_flags(checks).values()), [c for c in checks if c.flag]
    # certified-but-broken needs certificates: evaluate() adds it when it certifies
    assert {c.name for c in checks} == set(THRESHOLDS) - {"certified-but-broken"}
    assert all(c.meaning.endswith(".") and 0 <= c.share <= 1 for c in checks)


def test_gradient_masking_model_is_flagged(setup):
    x, y, normal = setup
    masked = Quantized(normal, levels=4)
    y_m = masked(x).argmax(1)
    checks = run_checks(masked, x, y_m, [Threat("linf", 0.1)], probe_size=30, probe_steps=20,
                        probe_queries=150)  # fmt: skip
    flags = _flags(checks)
    assert flags["zero-gradients"] and flags["loss-not-increasing"] and flags["unbounded-attack"]
    found = {c.name: c.details["findings"] for c in checks}
    (unbounded,) = found["unbounded-attack"]  # the ball covering the box, and the points left
    assert unbounded["threat"] == "linf:1" and unbounded["attack"] == "apgd (margin loss, 20 steps)"
    assert unbounded["share"] == unbounded["count"] / 30 and unbounded["count"] > 0
    (flat,) = found["loss-not-increasing"]  # zero gradients: the objective never moves
    assert (flat["threat"], flat["count"], flat["of"]) == ("linf:0.1", 30, 30)
    assert flags["black-box-beats-white-box"]  # Square does not need the (zero) gradients
    assert check_gradients(masked, x, y_m).share == 1.0


def test_randomized_model_is_flagged(setup):
    x, y, normal = setup
    noisy = Noisy(normal, sigma=3.0)
    assert check_randomness(noisy, x).flag and not check_randomness(normal, x).flag


def test_monotonicity_and_black_box_logic():
    small = torch.tensor([True, False, False, True])
    large = torch.tensor([True, True, False, True])  # more robust at the larger budget
    inc, share = monotonicity_share(small, large)
    assert inc == pytest.approx(0.25) and share == pytest.approx(0.25)
    assert monotonicity_share(large, small)[0] == 0.0
    curves = {"pgd linf": [(0.2, large), (0.1, small)]}  # order of eps does not matter
    assert eps_monotonicity_from_curves(curves) == pytest.approx(0.25)
    white = [torch.tensor([True, True, False, False]), torch.tensor([True, False, True, False])]
    black = torch.tensor([False, True, True, False])
    assert black_box_share(white, black) == pytest.approx(0.25)  # only point 0: all white missed


def test_eps_flag_from_the_evaluation_masks(setup):
    x, y, normal = setup
    r_small = torch.zeros(len(x), dtype=torch.bool)
    r_large = torch.ones(len(x), dtype=torch.bool)
    robust = {("pgd", Threat("linf", 0.05)): r_small, ("pgd", Threat("linf", 0.1)): r_large}
    checks = run_checks(normal, x, y, [Threat("linf", 0.1)], robust=robust, probe_size=10,
                        probe_steps=5, probe_queries=0)  # fmt: skip
    assert _flags(checks)["eps-monotonicity"]


def test_model_hardening_with_queries_flags_steps(setup):
    x, y, normal = setup
    # 1 gradient + 2 randomness + 1 clean passes, then the short probe (5 steps, ~8 passes)
    model = Hardening(normal, calls=12)
    checks = run_checks(model, x, y, [Threat("linf", 0.1)], probe_size=40, probe_steps=20,
                        probe_queries=0)  # fmt: skip
    assert _flags(checks)["steps-monotonicity"]


# ------------------------------------------------------------------ findings: attack, threat, points
def _mask(n, true_at):
    m = torch.zeros(n, dtype=torch.bool)
    m[list(true_at)] = True
    return m


def test_black_box_finding_names_the_attack_the_threat_and_exactly_the_points():
    n, lin, l2 = 12, Threat.parse("linf:0.1"), Threat.parse("l2:0.5")
    pgd = _mask(n, [0, 1, 2, 3, 5, 7, 9])
    apgd = _mask(n, [0, 1, 3, 4, 5, 7, 9, 11])
    square = _mask(n, [0, 1, 4])  # broke 2, 3, 5, 7, 9, 11, ...
    # AutoAttack with a Square member broke point 3: not a white-box result, so 3 still counts
    aa = _mask(n, [0, 1, 5, 7, 9])
    rows = [{"attack": "apgd-ce", "points_in": 12, "points_out": 6},
            {"attack": "square", "points_in": 6, "points_out": 5}]  # fmt: skip
    robust = {("pgd", lin): pgd, ("apgd-ce", lin): apgd, ("square", lin): square,
              ("autoattack", lin): aa, ("pgd", l2): _mask(n, [6, 8]),
              ("square", l2): _mask(n, [6])}  # fmt: skip
    checks = run_checks(linear_model(d=4, k=3), data(n, 4), torch.zeros(n, dtype=torch.long),
                        [lin], robust=robust, breakdowns={("autoattack", lin): rows},
                        probe_size=0)  # fmt: skip
    check = next(c for c in checks if c.name == "black-box-beats-white-box")
    found = {(f["source"], f["threat"]): f for f in check.details["findings"]}
    expect_lin = [i for i in range(n) if pgd[i] and apgd[i] and not square[i]]  # by hand: 3,5,7,9
    f = found[("evaluation", "linf:0.1")]
    assert expect_lin == [3, 5, 7, 9]
    assert (f["attack"], f["against"]) == ("square", ["pgd", "apgd-ce"])
    assert (f["indices"], f["count"], f["of"]) == (expect_lin, 4, n)
    assert f["share"] == pytest.approx(4 / n)
    f2 = found[("evaluation", "l2:0.5")]
    assert (f2["indices"], f2["against"]) == ([8], ["pgd"])
    inner = found[("ensemble", "linf:0.1")]  # count only: the ensemble keeps no per-point record
    assert (inner["attack"], inner["against"], inner["count"]) == ("autoattack/square",
                                                                   ["apgd-ce"], 1)  # fmt: skip
    assert check.flag and check.share == pytest.approx(4 / n)
    assert "linf:0.1" in check.summary and "square broke 4 of 12 points" in check.summary
    assert "(indices 3, 5, 7, 9)" in check.summary


def test_finding_lists_at_most_max_indices_and_counts_all():
    n = MAX_INDICES + 7
    t = Threat.parse("linf:0.2")
    robust = {("pgd", t): torch.ones(n, dtype=torch.bool), ("square", t): _mask(n, [0])}
    (f,) = black_box_findings(robust)
    assert f.count == n - 1 and f.indices == list(range(1, MAX_INDICES + 1))
    assert "(6 more)" in f.text and "that pgd missed" in f.text


def test_eps_and_certificate_findings_name_their_points():
    t_small, t_large = Threat.parse("linf:0.05"), Threat.parse("linf:0.1")
    small, large = _mask(5, [0, 3]), _mask(5, [0, 1, 3, 4])  # 1 and 4 robust only at 0.1
    (f,) = eps_monotonicity_findings({"pgd (linf)": [(0.1, large), (0.05, small)]},
                                     {"pgd (linf)": "linf"})  # fmt: skip
    assert (f.attack, f.threat, f.against, f.indices) == ("pgd (linf)", "linf:0.1",
                                                          ["linf:0.05"], [1, 4])  # fmt: skip
    assert f.share == pytest.approx(0.4) and f.count == 2
    robust = {("pgd", t_small): small, ("pgd", t_large): large}
    cert = {("ibp", t_large): _mask(5, [0, 2, 3])}  # pgd broke 2, certified by ibp
    check = check_certified_not_broken(cert, robust)
    (f,) = check.details["findings"]
    assert (f["attack"], f["against"], f["threat"], f["indices"]) == ("pgd", ["ibp"],
                                                                      "linf:0.1", [2])  # fmt: skip
    assert check.flag and "ibp certified" in check.summary


def test_probe_findings_use_dataset_indices_and_the_evaluations_white_box_attacks(setup):
    x, _, normal = setup
    masked = Quantized(normal, levels=4)  # zero gradients everywhere: Square beats the probes
    y = masked(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # points 0..4 are misclassified, so the probe points start at 5
    t = Threat("linf", 0.1)

    def checks(pgd_robust):
        return {c.name: c for c in run_checks(masked, x, y, [t], robust={("pgd", t): pgd_robust},
                                              probe_size=25, probe_steps=8, probe_queries=150)}  # fmt: skip

    first = checks(torch.ones(len(x), dtype=torch.bool))  # the evaluation's pgd broke nothing
    (grad,) = first["zero-gradients"].details["findings"]
    assert grad["count"] == 25 and grad["indices"] == list(range(5, 5 + MAX_INDICES))
    (bb,) = first["black-box-beats-white-box"].details["findings"]
    assert bb["attack"] == "square (150 queries)" and bb["threat"] == "linf:0.1"
    assert bb["against"] == ["apgd (margin loss, 8 steps)", "apgd (margin loss, 2 steps)", "pgd"]
    assert 0 < bb["count"] <= MAX_INDICES and min(bb["indices"]) >= 5
    # the evaluation's pgd broke exactly the points Square broke: no black-box win is left
    pgd = torch.ones(len(x), dtype=torch.bool)
    pgd[bb["indices"]] = False
    assert not checks(pgd)["black-box-beats-white-box"].details["findings"]
