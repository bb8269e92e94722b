"""Options whose effect the other attack tests did not pin (found by mutation testing):
Square's seeded draws, its windows on non-square images, and PGD's L1 sparsity."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks import PGD, Square


def _hard_to_fool(c: int, h: int, w: int) -> nn.Module:
    """A linear model whose true class (0) wins by a wide margin: Square never succeeds, so every
    query is spent and every proposal is drawn."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 3))
    with torch.no_grad():
        model[1].weight.mul_(0.01)
        model[1].bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
    return model.eval()


def test_square_draws_only_from_its_seeded_generator():
    model = _hard_to_fool(3, 6, 6)
    x, y = torch.rand(4, 3, 6, 6), torch.zeros(4, dtype=torch.long)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # the global generator must not matter
        runs.append(Square("linf:0.1", queries=80, seed=0, incremental=False)(model, x, y))
    assert torch.equal(runs[0], runs[1])


def test_square_windows_fit_non_square_images():
    # window side s = min(h, w, round(sqrt(p h w))): with h = 3, w = 12, p = 0.8, sqrt(p h w) = 5.4
    # but a window cannot be taller than the image
    model = _hard_to_fool(1, 3, 12)
    x, y = torch.rand(2, 1, 3, 12), torch.zeros(2, dtype=torch.long)
    for threat in ("linf:0.1", "l2:0.5"):
        attack = Square(threat, queries=20, seed=0, p_init=0.8, incremental=False)
        assert attack._window(0.8, 3, 12, 1) == (3, 3)
        result = attack.run(model, x, y)
        assert attack.threat.contains(result.x_adv, x).all()


def test_pgd_l1_step_touches_the_top_fraction_of_coordinates():
    # SLIDE: sign(g) on the coordinates whose |g| is in the top (1 - sparsity) fraction
    torch.manual_seed(0)
    d = 100
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2))
    x = 0.25 + 0.5 * torch.rand(3, 1, 10, 10)  # away from the box faces
    y = torch.zeros(3, dtype=torch.long)
    for sparsity in (0.5, 0.9):
        attack = PGD("l1:2", steps=1, random_start=False, l1_sparsity=sparsity)
        with torch.enable_grad():
            x_next, _, _ = attack.gradient_step(model, x, x.clone(), y, None)
        moved = (x_next - x).flatten(1).ne(0).sum(1)
        assert moved.tolist() == [round((1 - sparsity) * d)] * 3
