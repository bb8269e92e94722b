"""Certification and corruptions inside ``evaluate`` (one result, one report), the soundness
cross-check between certificates and attacks, and label noise from the CLI."""

from __future__ import annotations

import json

import numpy as np
import torch
from _cli import run_cli

from robustlab.evaluation import evaluate
from robustlab.evaluation.checks import check_certified_not_broken
from robustlab.report import render_report
from robustlab.threat import Threat


def test_certified_and_corrupted_sections(trained_digits_models, digits):
    _, test = digits
    model = trained_digits_models["pgd-at"]
    result = evaluate(
        model, test.head(60), ["pgd"], ["linf:0.02", "l2:0.1"], attack_kwargs={"pgd": {"steps": 10}},
        certify=["ibp", "crown", "smoothing"], certify_kwargs={"smoothing": {"n0": 20, "n": 100}},
        corruptions="mnist-brightness,mnist-shot-noise", corruption_kwargs={"severities": (1, 5)},
        progress=False, probe_size=20,
    )  # fmt: skip
    certs = {(c["method"], c["threat"]): c for c in result.sections["certification"]}
    # smoothing certifies L2 only; bound methods both norms
    assert set(certs) == {("ibp", "linf:0.02"), ("ibp", "l2:0.1"), ("crown", "linf:0.02"),
                          ("crown", "l2:0.1"), ("smoothing", "l2:0.1")}  # fmt: skip
    for (method, threat), c in certs.items():
        if method != "smoothing":  # a lower bound never above the attack's upper bound
            assert c["certified_accuracy"] <= result.robust_accuracy("pgd", threat) + 1e-9
    assert (
        certs[("crown", "linf:0.02")]["certified_accuracy"]
        >= certs[("ibp", "linf:0.02")]["certified_accuracy"]
    )
    checks = {c["name"]: c for c in result.checks}
    assert checks["certified-but-broken"]["flag"] is False
    corr = result.sections["corruptions"]
    assert set(corr["corruptions"]) == {"mnist-brightness", "mnist-shot-noise"}
    html = render_report([result])
    assert "Certified accuracy" in html and "Common corruptions" in html


def test_soundness_check_fires_on_a_broken_certificate():
    t = Threat.parse("linf:0.1")
    certified = {("ibp", t): torch.tensor([True, True, False, False])}
    robust = {("pgd", t): torch.tensor([True, False, False, True])}
    check = check_certified_not_broken(certified, robust)
    assert (
        check.flag and check.share == 0.25 and check.details["pairs"] == ["ibp vs pgd at linf:0.1"]
    )
    robust_ok = {("pgd", t): torch.tensor([True, True, False, True])}
    assert not check_certified_not_broken(certified, robust_ok).flag


def test_train_with_label_noise_cli(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--epochs", "1", "--label-noise", "symmetric:0.4",
                            "--out", str(out), "--no-progress"], capsys, monkeypatch)  # fmt: skip
    assert code in (0, None), err
    noise = np.load(out / "label_noise.npz")
    summary = json.loads((out / "label_noise.json").read_text())
    assert summary["n_noisy"] == int(noise["is_noisy"].sum()) == round(0.4 * len(noise["y_clean"]))
    assert ((noise["y_noisy"] != noise["y_clean"]) == noise["is_noisy"]).all()
