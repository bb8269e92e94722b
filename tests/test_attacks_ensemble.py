"""AutoAttack: versions, points in/out, per-sample worst case, containment asserted."""

from __future__ import annotations

import pytest
import torch
from _attack_models import data, mlp

from robustlab.attacks import ATTACKS, Attack, AutoAttack
from robustlab.attacks.autoattack import version_attacks
from robustlab.attacks.base import AttackContainmentError
from robustlab.errors import RobustlabError


def test_versions_name_the_published_attacks():
    assert [n for n, _ in version_attacks("standard", "linf")] == [
        "apgd-ce", "apgd-t", "fab-t", "square"
    ]  # fmt: skip
    assert [n for n, _ in version_attacks("standard", "l1")] == ["apgd-ce", "apgd-t"]
    assert "square" not in [n for n, _ in version_attacks("plus", "l1")]
    for norm in ("linf", "l2"):
        aa = AutoAttack(f"{norm}:0.1", version="standard")
        assert [label for label, _ in aa.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    rand = AutoAttack("linf:0.1", version="rand")
    assert [label for label, _ in rand.attacks] == ["apgd-ce+eot", "apgd-dlr+eot"]
    with pytest.raises(RobustlabError, match="known: standard"):
        AutoAttack("linf:0.1", version="fast")
    with pytest.raises(RobustlabError, match="custom"):
        AutoAttack("linf:0.1", version="custom")


def test_sequential_points_in_out_and_worst_case():
    model, x = mlp(), data(40)
    y = model(x).argmax(1)
    names = ["apgd-ce", "apgd-dlr", "square"]
    args = {"apgd-ce": {"steps": 5}, "apgd-dlr": {"steps": 10}, "square": {"queries": 50}}
    aa = AutoAttack("linf:0.06", version="custom", attacks=names, attack_args=args, seed=0)
    res = aa.run(model, x, y)
    rows = res.extras["attacks"]
    assert rows[0]["points_in"] == int(res.clean_correct.sum())
    for prev, nxt in zip(rows, rows[1:]):
        assert nxt["points_in"] == prev["points_out"]  # each attack gets the points still robust
    assert rows[-1]["points_out"] == int(res.robust.sum())
    # the ensemble is at least as strong as each of its attacks alone (per-sample worst case)
    for name in names:
        alone = ATTACKS.build(name, threat="linf:0.06", seed=0, **args[name]).run(model, x, y)
        assert res.robust.sum() <= alone.robust.sum()
    assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    assert aa.threat.contains(res.x_adv, x).all()


class _Cheater(Attack):
    """Returns points outside the ball: an internal error, never a counted or dropped point."""

    name = "cheater"

    def perturb(self, model, x, y, target, generator):
        return torch.rand(x.shape, generator=torch.Generator().manual_seed(0))


class _RunCheater(_Cheater):
    """Skips the base class's run (and its containment check): AutoAttack checks again."""

    def run(self, model, x, y, target=None):
        res = Attack.run(_Trusting(self.threat), model, x, y)
        res.x_adv = self.perturb(model, x, y, None, None)
        return res


class _Trusting(Attack):
    name = "trusting"

    def perturb(self, model, x, y, target, generator):
        return x.clone()


@pytest.mark.parametrize("cheater", [_Cheater, _RunCheater])
def test_points_outside_the_threat_are_an_internal_error(cheater):
    model, x = mlp(), data(30)
    y = model(x).argmax(1)
    aa = AutoAttack("linf:0.01", version="custom", attacks=[cheater("linf:0.01")])
    with pytest.raises(AttackContainmentError, match=r"cheater.* of 30 points outside"):
        aa.run(model, x, y)


def test_standard_version_runs_end_to_end():
    model, x = mlp(), data(12)
    y = model(x).argmax(1)
    small = {"apgd-ce": {"steps": 10}, "apgd-t": {"steps": 5, "n_targets": 2},
             "fab-t": {"steps": 5, "n_target_classes": 2}, "square": {"queries": 30}}  # fmt: skip
    aa = ATTACKS.build("autoattack", threat="linf:0.05", seed=0, attack_args=small)
    res = aa.run(model, x, y)
    labels = [r["attack"] for r in res.extras["attacks"]]
    assert labels == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert AutoAttack("linf:0.05").config()["attacks"][2]["name"] == "fab-t"
