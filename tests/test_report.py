"""Evaluation results round-trip through JSON and render into a self-contained HTML report."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robustlab.errors import RobustlabError
from robustlab.evaluation import EvaluationResult, evaluate
from robustlab.report import render_report


@pytest.fixture(scope="module")
def result(trained_digits_models, digits):
    _, test = digits
    model = trained_digits_models["standard"]
    return evaluate(model, test.head(120), ["fgsm", "pgd"], ["linf:0.05", "linf:0.1", "l2:0.5"],
                    attack_kwargs={"pgd": {"steps": 5}}, progress=False, model_name="mlp")  # fmt: skip


def test_result_contents(result):
    assert result.n == 120 and result.num_classes == 10
    assert len(result.per_class) == 10
    present = [a for a in result.per_class if a is not None]
    assert result.worst_class == min(present)
    assert abs(sum(present) / len(present) - result.clean_accuracy) < 0.2
    for threat in ("linf:0.05", "linf:0.1", "l2:0.5"):
        worst = result.robust_accuracy("worst-case", threat)
        assert worst <= min(result.robust_accuracy(a, threat) for a in ("fgsm", "pgd"))
        assert worst <= result.clean_accuracy
    prov = result.provenance
    assert prov["torch_version"] == torch.__version__ and prov["seed"] == 0
    assert prov["config"]["attacks"][0]["name"] == "fgsm"
    curves = result.curves()
    assert curves["pgd linf"][0] == (0.0, result.clean_accuracy)


def test_json_round_trip(result, tmp_path):
    path = result.save(tmp_path / "r.json")
    again = EvaluationResult.load(path)
    assert again == result
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RobustlabError, match="not valid JSON"):
        EvaluationResult.load(tmp_path / "bad.json")
    with pytest.raises(RobustlabError, match="No result"):
        result.robust_accuracy("pgd", "linf:0.3")


def test_report_is_self_contained(result):
    html = render_report([result], title="t")
    assert html.count("data:image/png;base64,") == 1
    assert "worst-case" in html and "linf 0.1" in html
    assert "http://" not in html and "https://" not in html


def test_report_and_cli_show_what_a_raised_flag_found(result, capsys):
    from robustlab.cli.render import print_checks
    from robustlab.evaluation.checks import black_box_findings
    from robustlab.evaluation.findings import make_check
    from robustlab.threat import Threat

    t = Threat.parse("linf:0.1")
    robust = {("pgd", t): torch.tensor([True, True, False, True]),
              ("square", t): torch.tensor([True, False, False, False])}  # fmt: skip
    check = make_check("black-box-beats-white-box", black_box_findings(robust))
    flagged = dataclasses.replace(result, checks=[check.to_dict()])
    html = render_report([flagged])
    assert "RAISED" in html and "At linf:0.1, square broke 2 of 4 points (indices 1, 3)" in html
    print_checks(flagged)
    printed = " ".join(capsys.readouterr().out.split())
    assert "FLAG black-box-beats-white-box" in printed and "(indices 1, 3)" in printed
    assert check.meaning.split(":")[0] in printed
