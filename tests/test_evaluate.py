"""Evaluation integration: per-attack points in/out and timing, ensemble breakdowns, checks in the
JSON, resumable state, suites and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from _attack_models import mlp
from _cli import run_cli

from robustlab.attacks import APGDCE
from robustlab.data import ArrayDataset
from robustlab.errors import RobustlabError
from robustlab.evaluation import EvaluationResult, evaluate, run_stages
from robustlab.evaluation.suites import SUITES
from robustlab.models import build_model, make_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def setup():
    model = mlp(d=16, k=5)
    x = torch.rand(50, 16, generator=torch.Generator().manual_seed(4))
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 5
    return model, ArrayDataset(x, y, 5, "toy")


def test_entries_carry_points_time_breakdown_and_checks(setup, tmp_path):
    model, ds = setup
    aa_args = {"version": "custom", "attacks": ["apgd-ce", "square"],
               "attack_args": {"apgd-ce": {"steps": 5}, "square": {"queries": 20}}}  # fmt: skip
    res = evaluate(model, ds, ["apgd-ce", "autoattack"], ["linf:0.05"], progress=False,
                   attack_kwargs={"apgd-ce": {"steps": 5}, "autoattack": aa_args}, probe_size=20)  # fmt: skip
    apgd, aa, worst = res.attacks
    assert apgd.points_in == 45 and apgd.points_out == round(apgd.robust_accuracy * 50)
    assert apgd.time_s > 0 and apgd.forward_passes > 0
    assert [r["attack"] for r in aa.breakdown] == ["apgd-ce", "square"]
    assert aa.breakdown[0]["points_in"] == 45 and aa.breakdown[-1]["points_out"] == aa.points_out
    assert worst.attack == "worst-case" and worst.robust_accuracy <= aa.robust_accuracy
    assert len(res.checks) == 7
    assert all({"flag", "share", "meaning", "summary"} <= set(c) for c in res.checks)
    assert all(isinstance(c["details"]["findings"], list) for c in res.checks)
    back = EvaluationResult.load(res.save(tmp_path / "r.json"))
    assert back.checks == res.checks and back.attacks[1].breakdown == aa.breakdown


class _Interrupted(APGDCE):
    """APGD-CE that dies on its second batch (same name and config as the real one)."""

    def run(self, model, x, y, target=None):
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls == 2:
            raise KeyboardInterrupt
        return super().run(model, x, y, target)


def test_interrupted_evaluation_resumes_where_it_stopped(setup, tmp_path):
    model, ds = setup
    state = tmp_path / "r.json.state.pt"
    kw = dict(batch_size=20, progress=False, checks=False, state_path=state)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, ds, [_Interrupted("linf:0.05", steps=5, seed=0)], **kw)
    saved = torch.load(state, weights_only=True)
    assert saved["items"][0]["next"] == 20  # one batch done and kept
    resumed = evaluate(model, ds, [APGDCE("linf:0.05", steps=5, seed=0)], **kw)
    assert resumed.provenance["config"]["resumed"]
    fresh = evaluate(model, ds, [APGDCE("linf:0.05", steps=5, seed=0)], batch_size=20,
                     progress=False, checks=False)  # fmt: skip
    assert resumed.attacks[0].robust_accuracy == fresh.attacks[0].robust_accuracy
    with pytest.raises(RobustlabError, match="different model"):
        evaluate(model, ds, [APGDCE("linf:0.1", steps=5, seed=0)], **kw)


def test_suites_are_registered():
    assert {"autoattack-standard", "autoattack-plus", "autoattack-rand", "quick"} <= set(
        SUITES.names()
    )
    assert SUITES.get("autoattack-standard").attacks == ("autoattack",)


def test_a_suite_composes_the_stages_evaluate_runs(setup):
    """``run_stages`` over a suite's stages gives ``evaluate``'s numbers for its attacks, with the
    user's arguments overriding the suite's key by key."""
    model, ds = setup
    suite = SUITES.get("quick")
    overrides = {"pgd": {"steps": 5}, "apgd-ce": {"steps": 5}}
    composed = run_stages(model, ds, suite.stages(["linf:0.05"], overrides, probe_size=20),
                          batch_size=20, progress=False)  # fmt: skip
    names, kwargs = suite.attack_plan(overrides)
    assert names == ["fgsm", "pgd", "apgd-ce"] and kwargs["pgd"] == {"steps": 5}
    direct = evaluate(model, ds, names, ["linf:0.05"], attack_kwargs=kwargs, batch_size=20,
                      progress=False, probe_size=20)  # fmt: skip
    assert [(e.attack, e.threat, e.robust_accuracy) for e in composed.attacks] == [
        (e.attack, e.threat, e.robust_accuracy) for e in direct.attacks
    ]
    assert [e.attack for e in composed.attacks][-1] == "worst-case"
    assert [(c["name"], c["flag"]) for c in composed.checks] == [
        (c["name"], c["flag"]) for c in direct.checks
    ]
    assert composed.provenance["config"] == direct.provenance["config"]


def test_cli_autoattack_and_suite(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    net = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32,))
    ckpt = save_checkpoint(tmp_path / "m.pt", make_checkpoint(net))
    out = tmp_path / "aa.json"
    code, stdout, err = run_cli(
        ["evaluate", "--checkpoint", str(ckpt), "--attacks", "autoattack", "--threat", "linf:0.3",
         "--limit", "30", "--out", str(out), "--no-progress", "--probe-size", "10"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code in (0, None), err
    data = json.loads(out.read_text())
    assert data["attacks"][0]["attack"] == "autoattack" and "checks" in data
    assert "attack-failure checks" in stdout and "apgd-ce" in stdout
    assert not (tmp_path / "aa.json.state.pt").exists()  # removed once the result is saved
    code, stdout, err = run_cli(
        ["evaluate", "--checkpoint", str(ckpt), "--suite", "quick", "--threat", "linf:0.1",
         "--limit", "30", "--no-progress", "--no-checks"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code in (0, None), err and "worst-case" in stdout
    code, _, err = run_cli(
        ["evaluate", "--checkpoint", str(ckpt), "--suite", "quick", "--attacks", "pgd"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 2 and "either --suite or --attacks" in err
