"""The ramp helpers of robustlab.training.schedules against hand-computed schedules."""

from __future__ import annotations

import pytest

from robustlab.threat import Threat
from robustlab.training.method import StepContext
from robustlab.training.methods import METHODS
from robustlab.training.schedules import (
    cosine_anneal,
    ramp,
    ramp_between,
    ramped_eps,
    ramped_threat,
)


def test_ramp_matches_the_hand_computed_schedule():
    # start 1 epoch, length 2 epochs, 4 steps per epoch: 0 for steps 0..4, then +1/8 per step
    hand = [0, 0, 0, 0, 0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1, 1, 1, 1]
    assert [ramp(step / 4, 1.0, 2.0) for step in range(16)] == hand


def test_ramp_of_length_zero_is_a_step():
    assert [ramp(e, 2.0, 0.0) for e in (0.0, 1.99, 2.0, 3.0)] == [0.0, 0.0, 1.0, 1.0]


def test_ramped_radius_and_coefficients():
    assert ramped_eps(0.1, 0.5) == 0.1 * 0.5
    assert ramped_eps(0.1, 0.5, 1.1) == 0.1 * 1.1 * 0.5  # IBP's training radius
    assert ramped_threat(Threat.parse("linf:0.2"), 0.25) == Threat("linf", 0.2 * 0.25)
    assert ramped_threat(Threat.parse("linf:0.2"), 0.0) is None
    assert [ramp_between(1.0, 0.5, s) for s in (0.0, 0.5, 1.0)] == [1.0, 0.75, 0.5]
    assert cosine_anneal(2.5, 1.5, 0.0) == 2.5 and cosine_anneal(2.5, 1.5, 1.0) == 1.5
    assert cosine_anneal(2.5, 1.5, 0.5) == pytest.approx(2.0)


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0])
def test_methods_follow_the_ramp(scale):
    ctx = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1, eps_scale=scale)
    ibp = METHODS.build("ibp", threat="linf:0.1", kappa_start=1.0, kappa_end=0.5)
    assert ibp.train_threat(ctx).eps == 0.1 * 1.1 * scale
    assert ibp.schedules(ctx)["kappa"] == 1.0 + (0.5 - 1.0) * scale
    crown = METHODS.build("crown-ibp", threat="linf:0.1", beta_start=1.0, beta_end=0.0)
    assert crown.schedules(ctx)["beta"] == 1.0 + (0.0 - 1.0) * scale
    pgd = METHODS.build("pgd-at", threat="linf:0.2")
    seen = []
    pgd.make_attack = lambda threat: seen.append(threat.eps) or _Identity()
    pgd.adversarial(None, _Batch(), ctx)
    assert seen == ([] if scale == 0 else [0.2 * scale])


class _Identity:
    def maximize(self, model, x, y):
        return x


class _Batch:
    x = y = None
