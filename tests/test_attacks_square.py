"""Square attack: schedule, window geometry, black-box success on a linear model, query budget."""

from __future__ import annotations

import pytest
import torch
from _attack_models import data, linear_model, mlp

from robustlab.attacks import Square
from robustlab.attacks.square import (
    _pseudo_gaussian,
    _random_windows,
    _window_masks,
    square_fraction,
)
from robustlab.errors import RobustlabError


def test_schedule_halves_p_at_the_papers_iterations():
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 51, 10000) == 0.2
    assert square_fraction(0.8, 8001, 10000) == pytest.approx(0.8 / 512)
    assert square_fraction(0.8, 501, 1000) == square_fraction(0.8, 5010, 10000)  # rescaled


def test_windows_and_pseudo_gaussian_block():
    masks = _window_masks(7, 10, 12, 3, 4, torch.Generator().manual_seed(0), "cpu")
    assert masks.shape == (7, 1, 10, 12) and (masks.sum((1, 2, 3)) == 12).all()
    block = _pseudo_gaussian(5, 5, "cpu", torch.float32)
    assert block.norm().item() == pytest.approx(1.0) and block[2, 2] == block.max()


@pytest.mark.parametrize("channels", [1, 3])
def test_linf_proposals_always_change_the_window(channels):
    # one-pixel windows: without redrawing, half the proposals would repeat the current value
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, channels, 6, 6, generator=gen)
    attack = Square("linf:0.1", queries=10)
    x_adv = x + attack._init_linf(x, gen)
    for _ in range(20):
        cand, top, left = attack._propose_linf(x, x_adv, 1, 1, gen)
        assert (cand != x_adv).flatten(1).any(1).all()
        changed = (cand != x_adv).any(1).nonzero()  # one pixel per sample: where the proposal says
        assert torch.equal(changed[:, 1:], torch.stack([top, left], 1))
        assert ((cand - x_adv).flatten(1) != 0).sum(1).max() <= channels  # only the window moved
        assert attack.threat.contains(cand, x).all()
        x_adv = cand


def test_linf_redraw_is_uniform_over_the_other_sign_patterns():
    # 2 channels, 1x1 images: 4 sign patterns; the current one is never proposed again and the
    # other 3 come out equally often, as when redrawing until the window changes
    gen = torch.Generator().manual_seed(0)
    x = torch.full((6000, 2, 1, 1), 0.5)
    attack = Square("linf:0.1", queries=10)
    x_adv = x + torch.tensor([0.1, -0.1]).view(1, 2, 1, 1)
    signs = torch.sign(attack._propose_linf(x, x_adv, 1, 1, gen)[0] - x).flatten(1)
    assert not (signs == torch.tensor([1.0, -1.0])).all(1).any()
    for pattern in ([1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0]):
        share = (signs == torch.tensor(pattern)).all(1).float().mean().item()
        assert share == pytest.approx(1 / 3, abs=0.03)


def test_random_windows_and_window_masks_draw_the_same_windows():
    masks = _window_masks(9, 10, 12, 3, 4, torch.Generator().manual_seed(5), "cpu")
    top, left, index = _random_windows(9, 10, 12, 3, 4, torch.Generator().manual_seed(5), "cpu")
    assert torch.equal(index[:, 0], top * 12 + left)
    from_index = torch.zeros(9, 10 * 12, dtype=torch.bool).scatter(1, index, True)
    assert torch.equal(from_index, masks.view(9, -1))


@pytest.mark.parametrize("threat", ["linf:0.3", "l2:2.0"])
def test_square_breaks_a_linear_model_within_budget(threat):
    model, x = linear_model(d=16, k=3), data(20, 16)
    y = model(x).argmax(1)
    attack = Square(threat, queries=200, seed=0)
    res = attack.run(model, x, y)
    assert res.success.float().mean() > 0.5
    assert attack.threat.contains(res.x_adv, x).all()
    assert res.forward_passes <= len(x) * (200 + 2)  # one query per iteration and point


def test_square_on_images_keeps_l2_budget():
    model = torch.nn.Sequential(torch.nn.Flatten(), mlp(d=3 * 8 * 8, k=4))
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    res = Square("l2:0.7", queries=40, seed=1).run(model, x, y)
    assert (res.norms <= 0.7 + 1e-5).all() and ((res.x_adv >= 0) & (res.x_adv <= 1)).all()


def test_square_rejects_l1():
    with pytest.raises(RobustlabError, match="linf and l2"):
        Square("l1:5")
