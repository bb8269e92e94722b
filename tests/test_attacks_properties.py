"""Attack mechanics against their defining equations, on tiny float64 models whose gradients are
known: FGSM/PGD steps, APGD's step-size rules and targeting, the Square attack's L2 start and
proposals, FAB's restarts, FAB-T/APGD-T/MD/BETA target sweeps, DeepFool, C&W's abort and binary
search, FMN's radius rule, the objectives, the Lp geometry, the EOT and transfer wrappers,
AutoAttack's hand-over between attacks and the base class's restart bookkeeping."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from _attack_models import F64, affine, record_iterates
from torch import nn

from robustlab.attacks import (
    APGD,
    APGDCE,
    APGDT,
    BETA,
    EOT,
    FAB,
    FABT,
    FGSM,
    FMN,
    MD,
    PGD,
    AttackResult,
    AutoAttack,
    CarliniWagnerL2,
    DeepFool,
    Square,
    Transfer,
    transfer_attack,
)
from robustlab.attacks import beta as beta_module
from robustlab.attacks import fab as fab_module
from robustlab.attacks.apgd import apgd_checkpoints
from robustlab.attacks.ascent import projected_ascent
from robustlab.attacks.autoattack import version_attacks
from robustlab.attacks.base import Attack, AttackContainmentError, minimal_norm_score
from robustlab.attacks.beta import best_targets
from robustlab.attacks.deepfool import rho_adv
from robustlab.attacks.geometry import (
    check_norm,
    dual_norm,
    perturbation_norms,
    project_ball,
    project_hyperplane,
)
from robustlab.attacks.l1_box import project_l1_box, sparse_l1_direction
from robustlab.attacks.linearize import boundary_distances, class_gradients, closest_boundary
from robustlab.attacks.objectives import (
    OBJECTIVES,
    adversarial_score,
    is_adversarial,
    margin_objective,
)
from robustlab.attacks.square import _pseudo_gaussian, _window_masks
from robustlab.errors import RobustlabError
from robustlab.models import build_model, make_checkpoint, save_checkpoint
from robustlab.threat import Threat


def random_affine(d: int = 6, k: int = 4, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    return affine(torch.randn(k, d, generator=g, dtype=F64), torch.zeros(k, dtype=F64))


def interior(n: int = 8, d: int = 6, seed: int = 1) -> torch.Tensor:
    """Points in [0.3, 0.7]^d: a step of up to 0.3 per coordinate stays in the box."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, d, generator=g, dtype=F64)


def ce_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g


# ----------------------------------------------------------------------------- FGSM and PGD


def first_logit(logits, y, target=None):
    """An objective with a known input gradient on an affine model: ``z_0``, gradient ``w_0``."""
    return logits[:, 0]


def test_fgsm_defaults_are_one_unprojected_signed_step_of_eps():
    """Goodfellow et al. 2015: x' = x + eps sign(grad_x CE); the default threat is the MNIST
    setting of Madry et al. 2018 (Linf, eps = 0.3), as for PGD. One gradient per point: the run
    costs the clean pass, one forward/backward and the check of the candidate."""
    assert FGSM().threat == PGD().threat == Threat("linf", 0.3)
    model, x = random_affine(), interior()
    y = model(x).argmax(1)
    res = FGSM("linf:0.05").run(model, x, y)
    expected = x + 0.05 * ce_gradient(model, x, y).sign()
    torch.testing.assert_close(res.x_adv, expected, rtol=0, atol=1e-12)
    assert res.forward_passes == 3 * len(x)


def test_fgsm_takes_its_step_size_and_loss():
    """A given step size is one step of that size; a given objective is the one ascended."""
    model, x = random_affine(), interior()
    y = model(x).argmax(1)
    half = FGSM("linf:0.1", step_size=0.03).maximize(model, x, y)
    torch.testing.assert_close(half, x + 0.03 * ce_gradient(model, x, y).sign(), rtol=0, atol=1e-12)
    up = FGSM("linf:0.1", loss=first_logit).maximize(model, x, y)
    torch.testing.assert_close(up, x + 0.1 * model.weight[0].detach().sign(), rtol=0, atol=1e-12)


def test_fgsm_steps_misclassified_points_too():
    """Adversarial training maximises the loss of every point, misclassified ones included, so
    FGSM never stops early: a point classified wrongly at x still takes its step."""
    model, x = random_affine(), interior()
    y = (model(x).argmax(1) + 1) % 4  # all misclassified
    x_adv = FGSM("linf:0.05").maximize(model, x, y)
    torch.testing.assert_close(
        x_adv, x + 0.05 * ce_gradient(model, x, y).sign(), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_rs_steps_eps_from_its_seeded_random_start(norm):
    """FGSM-RS (Wong et al. 2020): a uniform start x_0 in the ball (drawn with the attack's
    seed), then one step of eps (the default size) from it, projected: the step starts inside the
    ball, so a longer step would end elsewhere."""
    eps = 0.1 if norm == "linf" else 0.3
    threat = Threat(norm, eps)
    model, x = random_affine(), interior()
    y = model(x).argmax(1)
    x0 = threat.random_init(x, torch.Generator().manual_seed(5))
    g = ce_gradient(model, x0, y)
    direction = g.sign() if norm == "linf" else g / g.norm(dim=1, keepdim=True)
    expected = threat.project(x0 + eps * direction, x)
    got = FGSM(threat, random_start=True, seed=5).maximize(model, x, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- Square, L2


def paper_pseudo_gaussian(h: int, w: int) -> torch.Tensor:
    """Andriushchenko et al. 2020, Sec. 3.2: eta_{r,s} = sum_{k=0}^{M(r,s)} 1 / (n + 1 - k)^2 with
    n = floor(size / 2) and M(r,s) = n - (Chebyshev distance of (r, s) to the centre), i.e. ring
    d holds sum_{j=d}^{n} 1 / (j + 1)^2; the block has unit L2 norm."""
    n = max(h, w) // 2
    ring = [sum(1 / (j + 1) ** 2 for j in range(d, n + 1)) for d in range(n + 1)]
    block = torch.empty(h, w, dtype=F64)
    for r in range(h):
        for s in range(w):
            d = int(max(abs(r - (h - 1) / 2), abs(s - (w - 1) / 2)))
            block[r, s] = ring[d]
    return block / block.norm()


@pytest.mark.parametrize("h,w", [(5, 5), (7, 7), (1, 7), (4, 4), (3, 5)])
def test_square_pseudo_gaussian_is_the_papers_block(h, w):
    # 5 x 5: rings 1 + 1/4 + 1/9, 1/4 + 1/9 and 1/9 from the centre out
    block = _pseudo_gaussian(h, w, "cpu", F64)
    assert block.dtype == F64
    torch.testing.assert_close(block, paper_pseudo_gaussian(h, w), rtol=1e-12, atol=0)
    if (h, w) == (5, 5):
        assert float(block[2, 2] / block[0, 0]) == pytest.approx(49 / 4)


def _blocks(delta: torch.Tensor, s: int) -> torch.Tensor:
    """(N, C, H/s, W/s, s, s) view of the s x s tiles of ``delta``."""
    n, c, h, w = delta.shape
    return delta.reshape(n, c, h // s, s, w // s, s).permute(0, 1, 2, 4, 3, 5)


def test_square_l2_start_is_a_grid_of_signed_pseudo_gaussians():
    """Sec. 3.2: the L2 start tiles the image with pseudo-Gaussian blocks of side h // 5, one
    random sign per block and channel, rescaled to ||delta||_2 = eps."""
    attack = Square("l2:0.3")
    x = torch.full((4, 2, 24, 15), 0.5, dtype=F64)  # h > w: rows and columns are not swapped
    delta = attack._init_l2(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(delta.flatten(1).norm(dim=1), torch.full((4,), 0.3, dtype=F64),
                               rtol=1e-12, atol=0)  # fmt: skip
    tiles = _blocks(delta, 3)  # side min(24, 15) // 5 = 3
    unit = tiles / tiles.flatten(-2).norm(dim=-1)[..., None, None]
    pg = paper_pseudo_gaussian(3, 3)
    same = (unit - pg).abs().amax((-2, -1)) < 1e-12
    flipped = (unit + pg).abs().amax((-2, -1)) < 1e-12
    assert (same | flipped).all() and same.any() and flipped.any()
    # a flat input (N, D) is one row: blocks of D // 25 pixels
    flat = attack._init_l2(torch.full((3, 1, 1, 100), 0.5, dtype=F64), torch.Generator())
    tiles = flat.reshape(3, 25, 4)
    unit = tiles / tiles.norm(dim=-1, keepdim=True)
    pg = paper_pseudo_gaussian(1, 4)[0]
    assert (((unit - pg).abs().amax(-1) < 1e-12) | ((unit + pg).abs().amax(-1) < 1e-12)).all()


@pytest.mark.parametrize("shape", [(4, 1, 8, 8), (4, 1, 2, 50), (4, 1, 1, 30)])
def test_square_l2_start_on_small_inputs_has_one_block_per_pixel(shape):
    """Below 10 rows (or 50 flat pixels) the blocks are single pixels: every |delta_i| is the
    same and the signs are independent, so neighbouring pixels often differ in sign."""
    attack = Square("l2:0.3")
    delta = attack._init_l2(torch.full(shape, 0.5, dtype=F64), torch.Generator().manual_seed(0))
    d = delta[0, 0].numel()
    torch.testing.assert_close(delta.abs(), torch.full_like(delta, 0.3 / d**0.5), rtol=1e-12,
                               atol=0)  # fmt: skip
    row = delta.sign().reshape(shape[0], -1, 2)  # neighbouring pairs along the rows
    assert (row[..., 0] != row[..., 1]).float().mean() > 0.25


def test_square_l2_proposal_moves_window_2_into_window_1():
    """Sec. 3.2: a proposal empties a second window W2 and puts, per channel, the mass of both
    windows plus an equal share of the ball's slack, eps^2 - ||delta||^2, into the first window W1,
    shaped as the normalised old content of W1 plus a pseudo-Gaussian of random sign:

        delta'_{W1} = sqrt(m_c) (u + s p) / ||u + s p||,  u = delta_{W1} / ||delta_{W1}||,
        m_c = ||delta_{W1 ∪ W2, c}||^2 + (eps^2 - ||delta||^2) / C

    so that ||delta'|| = eps; the rest of the image is unchanged."""
    n, c, h, w, s, eps = 32, 3, 8, 8, 3, 0.4
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.05 * torch.rand(n, c, h, w, generator=g, dtype=F64)  # the box never binds
    delta = torch.randn(n, c, h, w, generator=g, dtype=F64)
    scale = eps * (1 - 0.4 * (torch.arange(n, dtype=F64) % 2))  # every other point leaves slack
    delta = delta / delta.flatten(1).norm(dim=1)[:, None, None, None] * scale[:, None, None, None]
    attack = Square(f"l2:{eps}")
    # the windows the proposal draws first, from the same generator state
    gen = torch.Generator().manual_seed(7)
    m1 = _window_masks(n, h, w, s, s, gen, "cpu")
    m2 = _window_masks(n, h, w, s, s, gen, "cpu") & ~m1
    cand = attack._propose_l2(x, x + delta, s, s, torch.Generator().manual_seed(7))
    new = cand - x
    both = m1 | m2
    torch.testing.assert_close(new * ~both, delta * ~both, rtol=0, atol=1e-12)
    assert (new * m2 == 0).all()
    torch.testing.assert_close(new.flatten(1).norm(dim=1), torch.full((n,), eps, dtype=F64),
                               rtol=1e-9, atol=0)  # fmt: skip
    slack = eps**2 - delta.pow(2).sum((1, 2, 3))
    mass = (delta * both).pow(2).sum((2, 3)) + slack[:, None] / c
    pg = paper_pseudo_gaussian(s, s)
    for i in range(n):
        top, left = m1[i, 0].nonzero().min(0).values.tolist()
        old = delta[i, :, top : top + s, left : left + s]
        u = old / old.flatten(1).norm(dim=1)[:, None, None]
        win = new[i, :, top : top + s, left : left + s]
        for ch in range(c):
            options = [(u[ch] + sign * pg) / (u[ch] + sign * pg).norm() for sign in (1, -1)]
            want = [mass[i, ch].sqrt() * o for o in options]
            assert min(float((win[ch] - o).abs().max()) for o in want) < 1e-9, (i, ch)


# ----------------------------------------------------------------------------- EOT and transfer
TARGETED_APGD = {"targeted": True, "steps": 6, "loss": "ce"}


def test_eot_passes_every_call_through_to_the_wrapped_attack():
    """On a deterministic model the mean over 2 identical draws is exact, so EOT(attack) is the
    attack itself, call for call, targets and random generator included."""
    model, x = random_affine(), interior()
    y = model(x).argmax(1)
    target = (y + 1) % 4
    eot = EOT("linf:0.1", attack="apgd", samples=2, attack_args=TARGETED_APGD, seed=3)
    plain = APGD("linf:0.1", seed=3, **TARGETED_APGD)
    res, ref = eot.run(model, x, y, target), plain.run(model, x, y, target)
    assert torch.equal(res.x_adv, ref.x_adv) and torch.equal(res.success, ref.success)
    assert res.extras["eot_samples"] == 2
    assert torch.equal(eot.maximize(model, x, y, target), plain.maximize(model, x, y, target))
    got = eot.perturb(model, x, y, target, torch.Generator().manual_seed(11))
    want = plain.perturb(model, x, y, target, torch.Generator().manual_seed(11))
    assert torch.equal(got, want)
    assert not torch.equal(got, plain.perturb(model, x, y, target, torch.Generator()))
    # the wrapper presents itself as the attack it wraps, and records it
    assert (eot.threat, eot.targeted, eot.norm, eot.seed) == (plain.threat, True, "linf", 3)
    assert eot.config() == {"name": "eot", "samples": 2, "attack": plain.config()}


def test_eot_wraps_a_minimal_norm_attack_without_a_threat():
    inner = FMN(norm="l1", steps=5)
    eot = EOT(attack=inner, samples=2)
    assert eot.minimal_norm and eot.threat is None and eot.norm == "l1"
    model, x = random_affine(), interior()
    y = model(x).argmax(1)
    torch.testing.assert_close(eot.run(model, x, y).x_adv, inner.run(model, x, y).x_adv)


def test_eot_refusals_name_the_problem():
    with pytest.raises(RobustlabError, match="^EOT needs a threat"):
        EOT(attack="apgd-ce")
    with pytest.raises(RobustlabError, match="EOT supports: ") as info:
        EOT("linf:0.1", attack="square")
    listed = str(info.value).split("EOT supports: ")[1].rstrip(".").split(", ")
    assert {"apgd", "apgd-ce", "apgd-dlr", "apgd-t", "pgd", "fgsm", "md", "beta", "fmn"} <= set(
        listed
    )
    assert not {"square", "fab", "deepfool", "cw", "eot", "autoattack"} & set(listed)


def _surrogate(twin: nn.Linear | None = None) -> nn.Module:
    """A robustlab MLP computing the affine ``twin`` (default ``random_affine()``) exactly on
    [0, 1] inputs (ReLU(x) = x)."""
    twin = twin if twin is not None else random_affine()
    d, k = twin.weight.shape[1], twin.weight.shape[0]
    mlp = build_model("mlp", input_shape=(d,), num_classes=k, hidden=(d,)).to(F64).eval()
    with torch.no_grad():
        mlp[0].weight.copy_(torch.eye(d, dtype=F64))
        mlp[0].bias.zero_()
        mlp[2].weight.copy_(twin.weight)
        mlp[2].bias.copy_(twin.bias)
    return mlp


def _target_model() -> nn.Linear:
    """The model under attack: the surrogate's affine map, perturbed."""
    twin, noise = random_affine(), random_affine(seed=5)
    return affine(twin.weight + 0.3 * noise.weight, twin.bias)


def test_transfer_runs_the_seeded_attack_on_the_surrogate_and_judges_on_the_model(tmp_path):
    """Papernot et al. 2016: x_adv = A(surrogate, x); success is the target model's verdict. A
    surrogate given as a checkpoint path is loaded; attack arguments and the seed reach A."""
    surrogate, model, x = _surrogate(), _target_model(), interior()
    y = model(x).argmax(1)
    args = {"steps": 4, "loss": "dlr"}
    crafted = APGD("linf:0.2", seed=3, **args).maximize(surrogate, x, y)
    res = Transfer("linf:0.2", surrogate=surrogate, attack_args=args, seed=3).run(model, x, y)
    assert torch.equal(res.x_adv[res.success], crafted[res.success])
    assert torch.equal(res.success, model(crafted).argmax(1) != y)
    assert 0 < int(res.success.sum()) < len(x)
    path = tmp_path / "surrogate.pt"
    save_checkpoint(path, make_checkpoint(surrogate.float()))
    loaded = Transfer("linf:0.2", surrogate=path, attack_args=args, seed=3)
    x32 = x.float()
    torch.testing.assert_close(loaded.surrogate(x32), surrogate(x32))
    tr = Transfer(surrogate=surrogate)  # defaults: the Linf 0.3 threat, APGD-CE seeded with 0
    assert tr.threat == Threat("linf", 0.3)
    assert tr.attack.config() == APGDCE("linf:0.3", seed=0).config()
    assert tr.config() == {"name": "transfer", "threat": "linf:0.3", "surrogate": "Sequential",
                           "attack": tr.attack.config()}  # fmt: skip


def test_targeted_transfer_and_the_helper():
    """Targeted, the surrogate attack is the targeted one and success means the model predicts
    the target: on the band model class 2 lies between classes 1 and 3, which an attack that is
    not really targeted lands in first."""
    band = affine([[0.0, 0.0], [4.0, 0.0], [0.0, 2.0], [-4.0, 0.0]], [0.0, -2.2, -1.5, 1.8])
    x2, y2 = torch.full((8, 2), 0.5, dtype=F64), torch.zeros(8, dtype=torch.long)
    t2 = torch.full((8,), 2)
    res = Transfer("linf:0.3", surrogate=_surrogate(band), targeted=True,
                   attack_args={"steps": 30, "loss": "margin"}).run(band, x2, y2, t2)  # fmt: skip
    assert res.success.all() and (band(res.x_adv).argmax(1) == 2).all()
    surrogate, model, x = _surrogate(), _target_model(), interior()
    y = model(x).argmax(1)
    # transfer_attack takes the threat from an attack object, or from threat=
    attack = APGD("linf:0.2", seed=1, steps=4)
    via = transfer_attack(surrogate, model, x, y, attack)
    direct = Transfer("linf:0.2", surrogate=surrogate, attack=attack).run(model, x, y)
    assert torch.equal(via.x_adv, direct.x_adv) and via.threat == Threat("linf", 0.2)
    named = transfer_attack(surrogate, model, x, y, "apgd-ce", threat="l2:0.5", seed=1)
    assert named.threat == Threat("l2", 0.5) and named.norms.max() <= 0.5 + 1e-9
    same = Transfer("l2:0.5", surrogate=surrogate, seed=1).run(model, x, y)
    assert torch.equal(named.x_adv, same.x_adv)  # the keywords reach the attack (its seed)
    with pytest.raises(RobustlabError, match="threat"):
        transfer_attack(surrogate, model, x, y, "apgd-ce")


# ----------------------------------------------------------------------------- DeepFool

# z = (1, 0.93 + 0.1 u, 2 u - 0.3, -v) at x = (0.5, 0.5): the runner-up, class 1 (z_1 = 0.98),
# has its linear boundary at L2 distance 0.02 / 0.1 = 0.2, class 2 (z_2 = 0.7) at 0.3 / 2 = 0.15
DF_W, DF_B = [[0.0, 0.0], [0.1, 0.0], [2.0, 0.0], [0.0, -1.0]], [1.0, 0.93, -0.3, 0.0]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_steps_to_the_closest_boundary_among_its_candidates(norm):
    """Moosavi-Dezfooli et al. 2016, Alg. 2: the step goes to the closest linearised boundary
    among the ``candidates`` most likely classes, |f_l| + 1e-4 along w_l, times 1 + overshoot.
    With every class that is class 2 (0.3001 / 2 along u); with candidates=2 only the runner-up,
    class 1, is looked at (0.0201 / 0.1). A single point is attacked as well as a batch. The
    boundaries are axis-aligned, so the L2 and Linf steps coincide; rho_adv (Eq. 15) divides the
    perturbation norm by ||x|| in the attack's norm."""
    model = affine(DF_W, DF_B)
    x, y = torch.full((1, 2), 0.5, dtype=F64), torch.tensor([0])
    for candidates, dist in ((10, 0.3001 / 2), (2, 0.0201 / 0.1)):
        res = DeepFool(norm=norm, candidates=candidates).run(model, x, y)
        want = x + torch.tensor([[1.02 * dist, 0.0]], dtype=F64)
        torch.testing.assert_close(res.x_adv, want, rtol=0, atol=1e-12)
        x_norm = 0.5 if norm == "linf" else 0.5 * 2**0.5
        assert res.extras["rho_adv"] == pytest.approx(1.02 * dist / x_norm, rel=1e-12)
    with pytest.raises(RobustlabError, match="untargeted"):
        DeepFool().run(model, x, y, torch.tensor([1]))
    # with a threat, success counts only within eps: the boundary at 0.153 is outside 0.1
    bounded = DeepFool(f"{norm}:0.1").run(model, x, y)
    assert bounded.threat == Threat(norm, 0.1) and not bounded.success.any()
    assert torch.equal(bounded.x_adv, x)
    assert float(bounded.extras["minimal_norms"][0]) == pytest.approx(1.02 * 0.3001 / 2, rel=1e-9)


def test_rho_adv_averages_over_the_broken_clean_correct_points():
    """rho_adv = mean ||r|| / ||x|| over the points that were correct and are now broken: clean
    errors (norm 0) and failures are left out; with none broken it is NaN."""
    x = torch.tensor([[0.3, 0.4], [0.6, 0.8], [0.0, 1.0], [0.15, 0.2]])  # L2 norms .5, 1, 1, .25
    res = AttackResult(
        x_adv=x, success=torch.tensor([True, True, False, True]),
        clean_correct=torch.tensor([True, False, True, True]),
        norms=torch.tensor([0.1, 0.0, 0.9, 0.2]), threat=None,
    )  # fmt: skip
    assert rho_adv(res, x) == pytest.approx((0.1 / 0.5 + 0.2 / 0.25) / 2)  # the L2 default
    assert rho_adv(res, x, "linf") == pytest.approx((0.1 / 0.4 + 0.2 / 0.2) / 2)
    res.success[:] = False
    assert math.isnan(rho_adv(res, x))


# ----------------------------------------------------------------------------- AutoAttack


def test_autoattack_versions_are_the_published_lists():
    """Croce & Hein 2020 (Sec. 4 and their code): standard = APGD-CE, APGD-T (9 targets), FAB-T
    (9 targets), Square (5000 queries); plus = APGD-CE, APGD-DLR, FAB (5 restarts each), Square,
    APGD-T, FAB-T; rand = APGD-CE and APGD-DLR with EOT over 20 draws. For L1 (Croce & Hein 2021)
    standard is APGD-CE (5 restarts) and APGD-T (5 targets), and plus drops Square (Linf/L2 only)."""
    standard = version_attacks("standard", "linf")
    assert standard == [("apgd-ce", {}), ("apgd-t", {"n_targets": 9}),
                        ("fab-t", {"n_target_classes": 9}), ("square", {"queries": 5000})]  # fmt: skip
    assert version_attacks("standard", "l2") == standard
    assert version_attacks("standard", "l1") == [("apgd-ce", {"restarts": 5}),
                                                 ("apgd-t", {"n_targets": 5})]  # fmt: skip
    plus = ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    for norm in ("linf", "l2"):
        specs = version_attacks("plus", norm)
        assert [name for name, _ in specs] == plus
        assert all(kw["restarts"] == 5 for name, kw in specs[:3])
    assert [name for name, _ in version_attacks("plus", "l1")] == [n for n in plus if n != "square"]
    assert version_attacks("rand", "linf") == [("eot", {"attack": "apgd-ce", "samples": 20}),
                                               ("eot", {"attack": "apgd-dlr", "samples": 20})]  # fmt: skip
    for bad in (lambda: version_attacks("best", "linf"), lambda: AutoAttack(version="best")):
        with pytest.raises(RobustlabError, match="known: standard, plus, rand, custom"):
            bad()


def test_autoattack_maximize_is_its_run_and_config_records_every_member():
    model, x = random_affine(), interior()
    y = model(x).argmax(1)
    aa = AutoAttack("linf:0.1", version="custom", attacks=["apgd-ce", "fab-t"], seed=4,
                    attack_args={"apgd-ce": {"steps": 4}, "fab-t": {"steps": 3}})  # fmt: skip
    assert torch.equal(aa.maximize(model, x, y), aa.run(model, x, y).x_adv)
    with pytest.raises(RobustlabError, match="^AutoAttack is untargeted"):
        aa.maximize(model, x, y, (y + 1) % 4)
    assert aa.config() == {"name": "autoattack", "threat": "linf:0.1", "version": "custom",
                           "seed": 4, "attacks": [a.config() for _, a in aa.attacks]}  # fmt: skip
    assert aa.attacks[0][1].config() == APGDCE("linf:0.1", steps=4, seed=4).config()


def _margin(model, x, y):
    z = model(x).detach()
    return z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], -math.inf).amax(1)


def test_autoattack_hands_the_robust_points_on_and_keeps_the_worst_case():
    """Croce & Hein 2020: each attack runs on the points still robust; a point counts as broken
    when the model misclassifies a returned point, and a robust point keeps the candidate with the
    smallest margin over all attacks. Every model call is counted once, and the per-attack record
    says how many points went in and came out, its time and its forward passes."""
    model, x = random_affine(d=6, k=4), interior(24)
    y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 4  # clean errors: broken from the start
    args = {"apgd-ce": {"steps": 3}, "square": {"queries": 15}}
    t0 = time.perf_counter()
    res = AutoAttack("linf:0.04", version="custom", attacks=["apgd-ce", "square"], seed=2,
                     attack_args=args).run(model, x, y)  # fmt: skip
    wall = time.perf_counter() - t0
    first = APGDCE("linf:0.04", seed=2, **args["apgd-ce"]).run(model, x[2:], y[2:])
    todo = 2 + (~first.success).nonzero().squeeze(1)
    second = Square("linf:0.04", seed=2, **args["square"]).run(model, x[todo], y[todo])
    broken = torch.ones(24, dtype=torch.bool)
    broken[todo] = second.success
    assert torch.equal(res.success, broken) and 0 < int(res.robust.sum()) < 22
    assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    # a robust point: the worst case over the clean point and both candidates
    robust = res.robust.nonzero().squeeze(1)
    cands = [x[robust], first.x_adv[robust - 2]]
    pos = {int(i): j for j, i in enumerate(todo)}
    cands.append(second.x_adv[[pos[int(i)] for i in robust]])
    worst = torch.stack([_margin(model, c, y[robust]) for c in cands]).amin(0)
    torch.testing.assert_close(_margin(model, res.x_adv[robust], y[robust]), worst)
    log = res.extras["attacks"]
    assert [(e["attack"], e["points_in"], e["points_out"]) for e in log] == [
        ("apgd-ce", 22, 22 - int(first.success.sum())),
        ("square", len(todo), int(res.robust.sum())),
    ]
    assert [e["forward_passes"] for e in log] == [first.forward_passes, second.forward_passes]
    assert all(0 < e["time_s"] <= wall for e in log)
    assert res.forward_passes == 24 + sum(e["points_in"] + e["forward_passes"] for e in log)
    assert res.extras["version"] == "custom"
    assert res.extras["fast_paths"]["incremental_forward"] == "not used: only for Linf on images"
    assert res.threat == Threat("linf", 0.04)
    torch.testing.assert_close(res.norms, (res.x_adv - x).abs().amax(1))


def test_autoattack_skips_attacks_with_nothing_left_and_checks_its_inputs():
    model, x = random_affine(), interior(6)
    y = model(x).argmax(1)
    members = [APGD("linf:0.3", steps=10, seed=0), "square"]  # an object, then a name
    aa = AutoAttack("linf:0.3", version="custom", attacks=members,
                    attack_args={"square": {"queries": 5}})  # fmt: skip
    assert [label for label, _ in aa.attacks] == ["apgd", "square"]
    res = aa.run(model, x, y)
    assert res.success.all()  # eps = 0.3 breaks every point of this model at the first attack
    assert res.extras["attacks"][1] == {"attack": "square", "points_in": 0, "time_s": 0.0,
                                        "points_out": 0}  # fmt: skip
    one = AutoAttack("linf:0.001", version="custom", attacks=["apgd-ce", "square"],
                     attack_args={"apgd-ce": {"steps": 2}, "square": {"queries": 3}})  # fmt: skip
    log = one.run(model, x[:1], y[:1]).extras["attacks"]
    assert log[1]["points_in"] == 1 and log[1]["forward_passes"] > 0  # a single point still runs
    with pytest.raises(RobustlabError, match="4-class"):
        aa.run(model, x, torch.full_like(y, 4))
    assert [name for name, _ in AutoAttack("l1:5").attacks] == ["apgd-ce", "apgd-t"]
    with pytest.raises(RobustlabError, match="^AutoAttack takes an attack list"):
        AutoAttack(attacks=["apgd-ce"])
    with pytest.raises(RobustlabError, match="^AutoAttack needs at least one attack"):
        AutoAttack(version="custom", attacks=[])


# ----------------------------------------------------------------------------- projected ascent


class Bump(nn.Module):
    """One input u: z = (0.05, 1 - 10 |u - 0.7|, 8 (u - 0.8)). From u = 0.5 in steps of +0.1 the
    prediction is 0, 0, 1 (at 0.7), 0, 2 (at 0.9), 2 (at 1.0): class 1 is a detour on the way to
    class 2."""

    def forward(self, x):
        u = x[:, :1]
        return torch.cat([torch.full_like(u, 0.05), 1 - 10 * (u - 0.7).abs(), 8 * (u - 0.8)], 1)


def test_projected_ascent_scores_and_stops_by_the_attack_kind():
    """A targeted ascent (toward class 2) stops when the target is reached (u = 0.9, not at the
    detour through class 1 nor later) and returns its best iterate by the targeted margin; an
    untargeted ascent stops at the first misclassification and scores by the untargeted margin,
    even when it follows a target (as APGD-T and MD sweep over targets)."""
    model, x, y, t = Bump(), torch.tensor([[0.5]], dtype=F64), torch.tensor([0]), torch.tensor([2])

    def ascend(targeted):
        attack = PGD("linf:0.5", loss="margin", targeted=targeted)
        return projected_ascent(attack, model, x, x, y, t, 8, lambda k: 0.1,
                                lambda k: margin_objective)  # fmt: skip

    torch.testing.assert_close(ascend(True), torch.tensor([[0.9]], dtype=F64))
    torch.testing.assert_close(ascend(False), torch.tensor([[0.7]], dtype=F64))


def test_projected_ascent_l1_step_is_sparse_and_skips_blocked_coordinates():
    """SLIDE (Tramer & Boneh 2019): the L1 step is sign(g) on the top (1 - sparsity) share of |g|
    among the coordinates not pushed through a box face, scaled to unit L1 norm (sparsity 0.95 by
    default: 2 of 40 coordinates)."""
    d = 40
    w = torch.zeros(2, d, dtype=F64)
    w[1] = torch.linspace(1.0, 2.0, d, dtype=F64)  # margin gradient w_1 - w_0: largest at the end
    model = affine(w, [100.0, 0.0])  # never adversarial: every step is taken
    x = torch.full((1, d), 0.5, dtype=F64)
    x[0, -1] = 1.0  # the largest gradient coordinate is at its upper face
    y, threat = torch.tensor([0]), Threat("l1", 1.0)

    def ascend(**kw):
        attack = PGD(threat, loss="margin")
        return projected_ascent(attack, model, x, x, y, None, 1, lambda k: 0.5,
                                lambda k: margin_objective, **kw)  # fmt: skip

    step = torch.zeros(1, d, dtype=F64)
    step[0, -3:-1] = 0.25  # the two largest unblocked coordinates, 0.5 / 2 each
    torch.testing.assert_close(ascend(), x + step, rtol=0, atol=1e-12)
    step = torch.zeros(1, d, dtype=F64)
    step[0, -11:-1] = 0.05  # sparsity 0.75: 10 coordinates
    torch.testing.assert_close(ascend(l1_sparsity=0.75), x + step, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- base bookkeeping


def test_attack_over_targets_sweeps_the_ranks_on_the_points_still_robust():
    """APGD-T / FAB-T / MD: rank r = 1, 2, ... of the wrong classes by clean logit; each rank
    attacks only the points no earlier rank broke, and a robust point keeps the candidate with the
    best untargeted margin. Clean errors are never attacked."""
    model = affine([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], [0.6, 0.0, 0.0, 0.0])
    x = torch.tensor([[0.2, 0.1], [0.1, 0.3], [0.3, 0.2], [0.9, 0.1]], dtype=F64)
    y = torch.tensor([0, 0, 0, 0])  # the last point is a clean error (class 1)
    calls = []

    def attack_target(xs, ys, ts):  # a fixed push of 0.35 toward the target's axis
        calls.append((xs.clone(), ts.clone()))
        push = torch.stack([(ts == 1).to(F64), (ts == 2).to(F64)], 1) * 0.35
        return xs + push

    got = PGD("linf:0.4").attack_over_targets(model, x, y, 3, attack_target)
    # rank 1 (1, 2, 1) breaks points 1 and 2 (0.1 + 0.35 = 0.45 < 0.6 does not break point 0),
    # rank 2 (class 2) on point 0 only, rank 3 (class 3) is not reached by the push: never broken
    assert [c[1].tolist() for c in calls] == [[1, 2, 1], [2], [3]]
    torch.testing.assert_close(calls[1][0], x[:1])
    want = x.clone()
    want[0] = x[0] + torch.tensor([0.35, 0.0], dtype=F64)  # rank 1: margin 0.05 < rank 2: 0.25
    want[1] = x[1] + torch.tensor([0.0, 0.35], dtype=F64)
    want[2] = x[2] + torch.tensor([0.35, 0.0], dtype=F64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    calls.clear()  # a push of 0.6 breaks every point at rank 1: the sweep ends there
    far = PGD("linf:0.6").attack_over_targets(model, x, y, 3, lambda xs, ys, ts: xs + 0.6)
    assert len(calls) == 0 and (model(far).argmax(1) != y).all()


class _Probe(Attack):
    """The base class alone: a random start is its whole perturbation."""

    name = "probe"

    def perturb(self, model, x, y, target, generator):
        return self.threat.random_init(x, generator)


def test_config_repr_and_the_seeded_generator_of_maximize():
    probe = _Probe("linf:0.1", seed=2)
    assert probe.config() == {"name": "probe", "threat": "linf:0.1", "norm": "linf",
                              "loss_name": "ce", "targeted": False, "restarts": 1, "seed": 2}  # fmt: skip
    assert repr(probe) == (
        "_Probe(threat='linf:0.1', norm='linf', loss_name='ce', targeted=False, restarts=1, seed=2)"
    )
    assert FMN(norm="l1").config()["threat"] is None
    model, x = random_affine(), interior()
    y = model(x).argmax(1)
    want = Threat("linf", 0.1).random_init(x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(probe.maximize(model, x, y), want, rtol=0, atol=0)


# ----------------------------------------------------------------------------- BETA


class Bump12(Bump):
    """Bump with z_2 = 12 (u - 0.8): class 2's own margin at u = 0.9 (1.15) beats class 1's at
    its first hit, u = 0.7 (0.95)."""

    def forward(self, x):
        z = super().forward(x)
        return torch.cat([z[:, :2], 12 * (x[:, :1] - 0.8)], 1)


def test_beta_runs_each_target_until_that_target_is_reached(monkeypatch):
    """Robey et al. 2024, Algorithm 1: the ascent toward class j stops when x is classified as j
    (not at the first misclassification: the way to class 2 passes through class 1); the class
    with the largest own margin M_j = z_j - z_y is kept. Targeted, the one target is followed."""
    monkeypatch.setattr(Threat, "random_init", lambda self, x, generator=None: x.clone())
    model, x, y = Bump12(), torch.tensor([[0.5]], dtype=F64), torch.tensor([0])
    kw = {"steps": 8, "step_size": 0.1}
    torch.testing.assert_close(BETA("linf:0.5", **kw).maximize(model, x, y), x + 0.4)
    got = BETA("linf:0.5", targeted=True, **kw).maximize(model, x, y, torch.tensor([1]))
    torch.testing.assert_close(got, x + 0.2)


def test_beta_hands_the_misclassified_candidates_to_the_selection(monkeypatch):
    seen = []
    inner = beta_module.best_targets

    def spy(own, adversarial=None):
        seen.append(adversarial)
        return inner(own, adversarial)

    monkeypatch.setattr(beta_module, "best_targets", spy)
    model, x = random_affine(), interior()
    y = model(x).argmax(1)
    res = BETA("linf:0.2", steps=3, seed=0).run(model, x, y)
    assert seen[0].shape == (3, 8) and seen[0].dtype == torch.bool
    assert torch.equal(seen[0].any(0), res.success)  # a point is broken iff some candidate is
    BETA("linf:0.2", steps=3, keep_adversarial=False).run(model, x, y)
    assert seen[1] is None
    # a point without a misclassified candidate keeps Algorithm 1's pick (point 1: target 1)
    own = torch.tensor([[0.1, -0.3], [0.4, -0.2]])
    assert best_targets(own, torch.tensor([[True, False], [False, False]])).tolist() == [0, 1]


# ----------------------------------------------------------------------------- FAB restarts


@pytest.mark.parametrize("norm,threat", [("l2", None), ("linf", "linf:0.05"), ("l1", None)])
def test_fab_restarts_start_at_half_the_boundary_distance(monkeypatch, norm, threat):
    """Croce & Hein 2020 (FAB), Sec. 3.3: a restart starts from x + 0.5 min(d, eps) u / ||u||
    (clipped to the box), u ~ N(0, I) from the attack's generator and d the linearised distance
    to the closest boundary (exact on an affine model)."""
    model = affine([[0.0, 0.0, 0.0], [3.0, 4.0, -1.0], [-1.0, 2.0, 2.0]], [0.9, 0.0, 0.0])
    x = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.4]], dtype=F64)  # on box faces
    y = model(x).argmax(1)
    seen = []
    inner = fab_module.class_gradients

    def spy(forward, x_k, *args):
        seen.append(x_k.detach().clone())
        return inner(forward, x_k, *args)

    monkeypatch.setattr(fab_module, "class_gradients", spy)
    kw = {"threat": threat} if threat else {"norm": norm}
    FAB(steps=1, restarts=2, seed=4, **kw).run(model, x, y)
    w, z = model.weight.detach(), model(x).detach()
    q = {"l2": 2.0, "linf": 1.0, "l1": math.inf}[norm]
    gaps = (z - z.gather(1, y[:, None])).abs() / torch.linalg.vector_norm(
        w[None] - w[y][:, None], ord=q, dim=2
    ).clamp_min(1e-30)
    dist = gaps.scatter(1, y[:, None], math.inf).amin(1)
    if threat:
        dist = dist.clamp(max=0.05)
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    p = {"l2": 2.0, "linf": math.inf, "l1": 1.0}[norm]
    u = u / torch.linalg.vector_norm(u, ord=p, dim=1, keepdim=True)
    want = (x + 0.5 * dist[:, None] * u).clamp(0, 1)
    assert (want == 0).any() and (want == 1).any()  # the box clips this start on both sides
    assert len(seen) == 3  # restart 0: one step at x; restart 1: d at x, then a step at the start
    torch.testing.assert_close(seen[2], want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- C&W


def test_cw_aborts_when_the_loss_stops_decreasing():
    """Carlini & Wagner's code: every steps / 10 iterations the run of one constant stops unless
    the loss fell by 0.01 %. On a model that ignores its input, from x = 0.5 (tanh-space w = 0,
    zero gradient), the loss never changes: each binary search step ends at its second check."""
    model = affine(torch.zeros(3, 4), [1.0, 0.0, 0.0])
    x, y = torch.full((2, 4), 0.5, dtype=F64), torch.tensor([0, 0])

    def passes(**kw):
        return CarliniWagnerL2(binary_search_steps=2, **kw).run(model, x, y).forward_passes

    n = 2  # the clean pass and the check of the result, around 2 searches of k steps each
    assert passes(steps=10) == 2 * n + 2 * 2 * n  # checks every step: stops after 2
    assert passes(steps=21) == 2 * n + 2 * 6 * n  # every 3 steps: stops after 6
    assert passes(steps=21, abort_early=False) == 2 * n + 2 * 21 * n


def test_cw_confidence_and_the_growing_constant():
    """kappa: success needs z_other - z_y >= kappa; while nothing is found the constant c grows
    tenfold per search (from 1e-4 it needs 5 searches to reach c > 2 d / ||w|| = 0.4 here)."""
    model = affine([[0.0, 0.0], [1.0, 0.0]], [0.7, 0.0])  # class 1 iff u > 0.7: distance 0.2
    x, y = torch.tensor([[0.5, 0.5]], dtype=F64), torch.tensor([0])
    res = CarliniWagnerL2(steps=50, lr=0.05, confidence=0.1, initial_const=10.0,
                          binary_search_steps=2).run(model, x, y)  # fmt: skip
    assert res.success.all()
    assert float(margin_objective(model(res.x_adv).detach(), y)) >= 0.1
    small = CarliniWagnerL2(steps=50, lr=0.05, initial_const=1e-4, binary_search_steps=5)
    assert small.run(model, x, y).success.all()


# ----------------------------------------------------------------------------- APGD

# z = (0, 4 (u - 0.55), 2 (v - 0.75)) around x = (0.5, 0.5): any ascent that raises u soon ends in
# class 1; class 2 needs v > 0.75 and u lowered as well
TWO_WAYS = ([[0.0, 0.0], [4.0, 0.0], [0.0, 2.0]], [0.0, -2.2, -1.5])


@pytest.mark.parametrize("objective", ["ce", "margin"])
def test_apgd_targeted_follows_the_target(monkeypatch, objective):
    """Targeted APGD ascends the targeted objective and succeeds only on the target, from every
    random start (many start in class 1's region); a point that cannot reach the target gets its
    highest-objective iterate."""
    model = affine(*TWO_WAYS)
    x, y = torch.full((16, 2), 0.5, dtype=F64), torch.zeros(16, dtype=torch.long)
    t = torch.full((16,), 2)
    res = APGD("linf:0.3", steps=10, loss=objective, targeted=True).run(model, x, y, t)
    assert res.success.all() and (model(res.x_adv).argmax(1) == 2).all()
    # class 2 only in a band of u between classes 1 and 3: the first steps overshoot into those
    band = affine([[0.0, 0.0], [4.0, 0.0], [0.0, 2.0], [-4.0, 0.0]], [0.0, -2.2, -1.5, 1.8])
    res = APGD("linf:0.3", steps=30, loss=objective, targeted=True).run(band, x, y, t)
    assert res.success.all() and (band(res.x_adv).argmax(1) == 2).all()
    attack = APGD("linf:0.05", steps=5, loss=objective, targeted=True)
    seen = record_iterates(monkeypatch, attack)
    x_adv = attack.run(model, x, y, t).x_adv
    values = torch.stack([attack.objective(model(s), y, t).detach() for s in seen])
    torch.testing.assert_close(attack.objective(model(x_adv), y, t).detach(), values.amax(0))


def test_apgd_t_runs_one_targeted_apgd_per_top_class(monkeypatch):
    model, x = random_affine(), interior()
    y = model(x).argmax(1)
    attack = APGDT("linf:0.001", n_targets=2, steps=2)  # breaks nothing: both ranks run
    seen = []
    inner = attack.apgd

    def spy(model, xs, ys, ts, generator):
        seen.append(ts.clone())
        return inner(model, xs, ys, ts, generator)

    monkeypatch.setattr(attack, "apgd", spy)
    attack.run(model, x, y)
    ranks = model(x).detach().scatter(1, y[:, None], -math.inf).argsort(1, descending=True)
    assert torch.equal(seen[0], ranks[:, 0]) and torch.equal(seen[1], ranks[:, 1])


def test_l1_apgd_starts_sparse_and_steps_on_the_top_k_coordinates(monkeypatch):
    """Croce & Hein 2021 (l1-APGD): the start is a Gaussian draw (the attack's generator)
    projected onto the L1 ball ∩ box; the first step is eta_0 = eps along the sparse direction on
    the top k = 20 % of the coordinates, projected exactly onto the L1 ball ∩ box."""
    w = torch.zeros(2, 10, dtype=F64)
    w[1] = torch.linspace(0.1, 1.0, 10, dtype=F64)  # the top-2 gradient coordinates are 8 and 9
    model = affine(w, [10.0, 0.0])  # never adversarial
    x = torch.full((1, 10), 0.5, dtype=F64)
    x[0, :3] = torch.tensor([0.0, 1.0, 0.0], dtype=F64)  # on box faces
    x[0, 8:] = torch.tensor([0.95, 0.9], dtype=F64)  # the box cuts the step there
    y = torch.tensor([0])
    eps = 0.5
    attack = APGD(f"l1:{eps}", steps=2, seed=7, loss="margin", early_stop=False)
    seen = record_iterates(monkeypatch, attack)
    attack.maximize(model, x, y)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    x0 = project_l1_box(x + noise, x, eps)
    torch.testing.assert_close(seen[0], x0, rtol=0, atol=1e-12)
    x0r = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(margin_objective(model(x0r), y).sum(), x0r)
    x1 = project_l1_box(x0 + eps * sparse_l1_direction(g, x0, torch.tensor([2.0])), x, eps)
    torch.testing.assert_close(seen[1], x1, rtol=0, atol=1e-12)
    assert int((seen[1] - seen[0]).ne(0).sum()) <= 2 + int(x0.ne(x).sum())


def test_apgd_budget_early_stop_and_trace():
    """eps = 0: no step is taken. With early stopping a point stops at its first adversarial
    iterate (fewer model calls, same point); without, every step runs. The trace holds the best
    objective per point after each iteration: non-decreasing, steps + 1 rows."""
    model, x = random_affine(), interior()
    y = model(x).argmax(1)
    n = len(x)
    assert APGD("linf:0", steps=5).run(model, x, y).forward_passes == 3 * n
    full = APGD("linf:0.3", steps=6, early_stop=False).run(model, x, y)
    early = APGD("linf:0.3", steps=6).run(model, x, y)
    assert full.forward_passes == 3 * n + 6 * n  # clean, start, 6 steps, the check
    assert early.success.all() and early.forward_passes < full.forward_passes
    attack = APGD("linf:0.05", steps=6, early_stop=False)
    attack.record_trace = True
    x_adv = attack.maximize(model, x, y)
    trace = attack.trace
    assert trace.shape == (7, n) and (trace[1:] >= trace[:-1]).all()
    attack = APGD("linf:0.3", steps=6)  # every point is broken early: the trace still has 7 rows
    attack.record_trace = True
    attack.maximize(model, x, y)
    assert attack.trace.shape == (7, n)
    loss = F.cross_entropy(model(x_adv), y, reduction="none").detach()
    robust = model(x_adv).argmax(1) == y
    torch.testing.assert_close(trace[-1][robust], loss[robust])


def test_sparse_l1_direction_takes_the_top_k_unblocked_coordinates():
    """The l1-APGD step: sign(g) on the k largest |g_i| among the coordinates the box does not
    block (at 0 with g_i < 0, at 1 with g_i > 0), scaled to unit L1 norm; k is clipped to
    [1, D]."""
    g = torch.tensor([[-0.9, 0.8, 0.7, -0.6, 0.5, -0.4, 0.3]], dtype=F64)
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5]], dtype=F64)
    # blocked: 0 (at 0, pushed down), 1 (at 1, pushed up); free: 2 (at 0, up), 3 (at 1, down)

    def step(k):
        return sparse_l1_direction(g, x, torch.tensor([k], dtype=F64))

    torch.testing.assert_close(step(2.0), torch.tensor([[0, 0, 0.5, -0.5, 0, 0, 0]], dtype=F64))
    torch.testing.assert_close(step(0.3), torch.tensor([[0, 0, 1.0, 0, 0, 0, 0]], dtype=F64))
    every = torch.tensor([[0, 0, 0.2, -0.2, 0.2, -0.2, 0.2]], dtype=F64)
    torch.testing.assert_close(step(50.0), every)
    assert float(step(3.0).abs().sum()) == pytest.approx(1.0)


def test_fab_t_follows_each_target_and_stops_once_broken_within_eps(monkeypatch):
    """FAB-T: targeted FAB toward each of the top classes in turn, on every point without a
    threat (a smaller perturbation may come later), but with a threat only on the points not yet
    broken within eps; restarts draw from the attack's generator."""
    model, x = random_affine(), interior(5)
    y = model(x).argmax(1)
    calls = []
    inner = FABT.descend

    def spy(self, model, xs, ys, plane, goal, generator):
        calls.append((len(xs), plane.clone(), generator))
        return inner(self, model, xs, ys, plane, goal, generator)

    monkeypatch.setattr(FABT, "descend", spy)
    FABT(norm="l2", n_target_classes=3, steps=3, seed=1).run(model, x, y)
    ranks = model(x).detach().scatter(1, y[:, None], -math.inf).argsort(1, descending=True)
    assert [c[0] for c in calls] == [5, 5, 5]
    for k, (_, plane, generator) in enumerate(calls):
        assert torch.equal(plane, ranks[:, k]) and isinstance(generator, torch.Generator)
    calls.clear()
    one = FABT(norm="l2", n_target_classes=3, steps=3).run(model, x[:1], y[:1])
    assert len(calls) == 3 and one.success.all()
    calls.clear()
    FABT("l2:5", n_target_classes=3, steps=3).run(model, x, y)  # the first target breaks all
    assert [c[0] for c in calls] == [5]


# ----------------------------------------------------------------------------- MD


def test_md_first_stage_of_a_fresh_attack_and_its_restarts(monkeypatch):
    """Ma et al. 2022: restart 0 (and every even restart) first ascends -z_y, odd restarts
    max_{j!=y} z_j; an attack used before any run (adversarial training calls maximize) starts
    with -z_y. z = (10 + u - v + w/2, 2u - v/2 - w, ...): -z_0 rises along (-1, 1, -1)."""
    monkeypatch.setattr(Threat, "random_init", lambda self, x, generator=None: x.clone())
    model = affine([[1.0, -1.0, 0.5], [2.0, -0.5, -1.0], [0.1, 0.1, 0.1]], [10.0, 0.0, -1.0])
    x, y = torch.full((1, 3), 0.5, dtype=F64), torch.tensor([0])
    md = MD("linf:0.1", steps=2, stage1_steps=1)
    seen = record_iterates(monkeypatch, md)
    md.maximize(model, x, y)
    torch.testing.assert_close(seen[1], x + 0.1 * torch.tensor([[-1.0, 1.0, -1.0]], dtype=F64))
    seen.clear()
    md3 = MD("linf:0.1", steps=2, stage1_steps=1, restarts=3)
    seen = record_iterates(monkeypatch, md3)
    md3.run(model, x, y)  # never broken: three restarts, terms -z_y, max z_j, -z_y
    steps = [seen[i] - x for i in (1, 3, 5)]
    want = [[-1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]]
    for got, sign in zip(steps, want, strict=True):
        torch.testing.assert_close(got, 0.1 * torch.tensor([sign], dtype=F64))


@pytest.mark.parametrize("n_targets", [None, 2])
def test_md_targeted_reaches_the_target(n_targets):
    model = affine(*TWO_WAYS)
    x, y, t = (
        torch.full((3, 2), 0.5, dtype=F64),
        torch.zeros(3, dtype=torch.long),
        torch.full((3,), 2),
    )
    res = MD("linf:0.3", steps=10, targeted=True, n_targets=n_targets).run(model, x, y, t)
    assert res.success.all() and (model(res.x_adv).argmax(1) == 2).all()


# ----------------------------------------------------------------------------- objectives

Z = torch.tensor([[3.0, 1.0, 2.0, -1.0, 0.5], [0.0, 4.0, 1.0, 3.0, 2.0]])
Y, T = torch.tensor([0, 3]), torch.tensor([2, 1])


@pytest.mark.parametrize(
    "name,untargeted,targeted",
    [
        # max_{j!=y} z_j - z_y;  z_t - max_{j!=t} z_j
        ("margin", [2 - 3, 4 - 3], [2 - 3, 4 - 3]),
        # max_{j!=y} z_j - z_y;  z_t - z_y (BETA's own margin)
        ("target-margin", [2 - 3, 4 - 3], [2 - 3, 4 - 3]),
        # -z_y;  z_t (MD's first term)
        ("neg-true-logit", [-3, -3], [2, 4]),
        # max_{j!=y} z_j;  -max_{j!=t} z_j (MD's second term)
        ("max-other-logit", [2, 4], [-3, -3]),
    ],
)
def test_objectives_hand_values(name, untargeted, targeted):
    objective = OBJECTIVES.get(name)
    torch.testing.assert_close(objective(Z, Y, None), torch.tensor(untargeted, dtype=Z.dtype))
    torch.testing.assert_close(objective(Z, Y, T), torch.tensor(targeted, dtype=Z.dtype))


def test_cross_entropy_success_and_score():
    lse = torch.logsumexp(Z, 1)
    torch.testing.assert_close(OBJECTIVES.get("ce")(Z, Y, None), lse - Z[[0, 1], Y])
    torch.testing.assert_close(OBJECTIVES.get("ce")(Z, Y, T), Z[[0, 1], T] - lse)
    # misclassified (prediction 0 and 1 against labels 0 and 3), or classified as the target
    assert is_adversarial(Z, Y).tolist() == [False, True]
    assert is_adversarial(Z, Y, T).tolist() == [False, True]
    z = Z.clone().requires_grad_(True)
    score = adversarial_score(z, Y, T)
    assert not score.requires_grad
    torch.testing.assert_close(score, torch.tensor([2 - 3, 4 - 3.0]))
    with pytest.raises(RobustlabError, match="at least 3 classes"):
        OBJECTIVES.get("dlr")(Z[:, :2], torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- linearisation


def test_class_gradients_and_the_closest_linear_boundary():
    """Moosavi-Dezfooli et al. 2016, Eq. 8: f_j = z_j - z_y, w_j = grad f_j, and the closest
    boundary minimises |f_j| / ||w_j||_q (q the dual exponent); exact on an affine model."""
    w = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [1.45, 1.45]], dtype=F64)
    model = affine(w, [1.0, 0.0, 0.0, 0.0])
    x = torch.tensor([[0.2, 0.1]], dtype=F64)  # z = (1, 0.2, 0.3, 0.435): class 0
    y = torch.tensor([0])
    classes = torch.tensor([[1, 2, 3]])
    f, grads, logits = class_gradients(model, x, y, classes)
    torch.testing.assert_close(f, torch.tensor([[-0.8, -0.7, -0.565]], dtype=F64))
    torch.testing.assert_close(grads, w[1:][None])
    torch.testing.assert_close(logits, model(x).detach())
    # class 2 is at 0.7 / 3 in every norm; class 3 at 0.565 / ||(1.45, 1.45)||_q: 0.2755 (L2),
    # 0.1948 (Linf: q = 1) and 0.3897 (L1: q = inf)
    for norm, q, pick in [("l2", 2.0, 1), ("linf", 1.0, 2), ("l1", math.inf, 1)]:
        dist = torch.tensor(
            [[0.8, 0.7 / 3, 0.565 / torch.linalg.vector_norm(w[3], ord=q)]], dtype=F64
        )
        torch.testing.assert_close(boundary_distances(f, grads, norm), dist)
        f_s, w_s = closest_boundary(f, grads, norm)
        torch.testing.assert_close(f_s, f[:, pick])
        torch.testing.assert_close(w_s, grads[:, pick])
    f1, w1, _ = class_gradients(model, x, y, classes[:, :1])  # one candidate: no choice
    f_s, w_s = closest_boundary(f1, w1, "l2")
    torch.testing.assert_close(f_s, f[:, 0])
    torch.testing.assert_close(w_s, grads[:, 0])


# ----------------------------------------------------------------------------- geometry


def test_norms_duals_and_their_names():
    delta = torch.tensor([[3.0, -4.0, 0.0], [0.0, 0.0, 0.5]])
    for norm, want in [("l0", [2, 1]), ("l1", [7, 0.5]), ("l2", [5, 0.5]), ("linf", [4, 0.5])]:
        torch.testing.assert_close(
            perturbation_norms(delta, norm), torch.tensor(want, dtype=delta.dtype)
        )
    # the dual norm: ||w||_q with 1/p + 1/q = 1, over the dimensions from ``start`` on
    for norm, want in [("l1", [4, 0.5]), ("l2", [5, 0.5]), ("linf", [7, 0.5])]:
        torch.testing.assert_close(dual_norm(delta, norm), torch.tensor(want))
        torch.testing.assert_close(dual_norm(delta[None], norm, start=2), torch.tensor([want]))
    with pytest.raises(RobustlabError, match="l0"):
        dual_norm(delta, "l0")
    for alias, name in [("inf", "linf"), (" Linf ", "linf"), ("L_INF", "linf"), ("2", "l2"),
                        ("1", "l1"), ("0", "l0"), ("L2", "l2")]:  # fmt: skip
        assert check_norm(alias, ("linf", "l2", "l1", "l0"), "x") == name
    with pytest.raises(RobustlabError, match=r"^fmn supports the norms linf, l2; got 'l1'"):
        check_norm("l1", ("linf", "l2"), "fmn")


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_hyperplane_step_without_the_box_is_the_closed_form(norm):
    """Croce & Hein 2020 (FAB), Sec. 3.1 / DeepFool's step: the smallest delta with <w, delta> = c
    is c w / ||w||_2^2 (L2), c sign(w) / ||w||_1 (Linf) and c e_k / w_k, k = argmax |w_k| (L1)."""
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 3.0, -1.0, 1.0]], dtype=F64)
    c = torch.tensor([0.7, -0.4], dtype=F64)
    delta = project_hyperplane(w, c, norm)
    if norm == "l2":
        want = c[:, None] * w / (w * w).sum(1, keepdim=True)
    elif norm == "linf":
        want = c[:, None] * w.sign() / w.abs().sum(1, keepdim=True)
    else:
        want = torch.tensor([[0.0, 0.7 / -2.0, 0.0, 0.0], [0.0, -0.4 / 3.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(delta, want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close((w * delta).sum(1), c, rtol=1e-12, atol=1e-15)
    with pytest.raises(RobustlabError, match="l0"):
        project_hyperplane(w, c, "l0")


@pytest.mark.parametrize("norm", ["linf", "l2", "l1", "l0"])
def test_ball_projection_is_a_projection(norm):
    """In the ball, idempotent, and the closest such point (for L2/Linf/L1 against a dense
    sample of the ball; for L0, the largest floor(r) magnitudes kept)."""
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(6, 5, generator=g, dtype=F64)
    radius = torch.tensor([0.3, 1.0, 2.5, 100.0, 0.5, 3.7], dtype=F64)
    p = project_ball(delta, norm, radius)
    assert (perturbation_norms(p, norm) <= radius * (1 + 1e-12)).all()
    torch.testing.assert_close(project_ball(p, norm, radius), p, rtol=0, atol=1e-12)
    torch.testing.assert_close(p[3], delta[3])  # inside already: unchanged
    if norm == "l0":
        kept = p.ne(0).sum(1)
        assert kept.tolist() == [0, 1, 2, 5, 0, 3]
        top = delta.abs().argsort(1, descending=True)
        for i, k in enumerate(kept.tolist()):
            assert set(p[i].nonzero().flatten().tolist()) == set(top[i, :k].tolist())
        return
    cand = torch.randn(4000, 5, generator=g, dtype=F64)
    for i in range(6):
        inside = project_ball(cand, norm, radius[i].expand(4000))
        best = (inside - delta[i]).norm(dim=1).min()
        assert float((p[i] - delta[i]).norm()) <= float(best) + 1e-9


class _Scripted(Attack):
    """Restart r moves the first coordinate of every point it is given by shifts[r]."""

    name = "scripted-ball"

    def __init__(self, shifts, **kw):
        super().__init__("linf:0.5", restarts=len(shifts), **kw)
        self.shifts, self.given = shifts, []

    def perturb(self, model, x, y, target, generator):
        self.given.append((x[:, 1].clone(), torch.is_grad_enabled()))
        out = x.clone()
        out[:, 0] += self.shifts[self._restart]
        return out


def test_restarts_attack_the_points_still_robust_and_keep_the_lowest_margin():
    """Class 1 iff u > 0.5 (margin z_0 - z_1 = 0.5 - u). Restart 0 moves u by +0.2, restart 1 by
    +0.35, restart 2 by -0.1: a point broken by one restart is not attacked again; a robust point
    keeps its lowest-margin candidate, not the last one. Clean errors are never attacked."""
    model = affine([[0.0, 0.0], [1.0, 0.0]], [0.5, 0.0])
    x = torch.tensor([[0.1, 0.0], [0.2, 1.0], [0.4, 2.0], [0.9, 3.0]], dtype=F64) / torch.tensor(
        [1.0, 4.0], dtype=F64
    )  # second coordinate: an id
    y = torch.tensor([0, 0, 0, 0])  # point 3 (u = 0.9) is a clean error
    attack = _Scripted([0.2, 0.35, -0.1])
    with torch.no_grad():
        res = attack.run(model, x, y)
    ids = [(given * 4).round().long().tolist() for given, _ in attack.given]
    assert ids == [[0, 1, 2], [0, 1], [0]]  # point 2 broken at restart 0, point 1 at restart 1
    assert all(grad for _, grad in attack.given)  # gradients on, even inside no_grad
    assert res.success.tolist() == [False, True, True, True]
    assert res.clean_correct.tolist() == [True, True, True, False]
    want_u = [0.1 + 0.35, 0.2 + 0.35, 0.4 + 0.2, 0.9]
    torch.testing.assert_close(res.x_adv[:, 0], torch.tensor(want_u, dtype=F64))
    torch.testing.assert_close(res.norms, (res.x_adv - x).abs().amax(1))
    assert res.forward_passes == 4 + 3 + 2 + 1  # the clean pass, then each restart's check
    assert res.robust_accuracy == 0.25 and res.success_rate == pytest.approx(2 / 3)
    nothing = AttackResult(x, torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool),
                           torch.zeros(4), None)  # fmt: skip
    assert nothing.success_rate == 0.0 and nothing.robust_accuracy == 0.0


def test_apgd_checkpoints_on_short_runs():
    """w_j = ceil(p_j N) strictly inside the run (Croce & Hein 2020, Sec. 3.2): p = 0.22, 0.41,
    0.57, 0.70, ... gives 1, 2, 3 for N = 4; l1-APGD checks every max(4 % of N, 1) iterations."""
    assert apgd_checkpoints(4) == [1, 2, 3]
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert apgd_checkpoints(20, "l1") == list(range(1, 20))
    assert apgd_checkpoints(100, "l1") == list(range(4, 100, 4))


# ----------------------------------------------------------------------------- FMN


def test_fmn_radius_update_hand_values():
    """Pintor et al. 2021, Alg. 1. L0 (an integer radius): adversarial -> min(eps - 1,
    floor(eps (1 - gamma)), best), else max(eps + 1, floor(eps (1 + gamma))), at least 0.
    Lp: adversarial -> min(eps (1 - gamma), best); found before -> eps (1 + gamma); never ->
    max(||delta|| + |L| / ||grad L||_q, eps (1 + gamma)) (the linear estimate alone for
    paper_radius=True or at the infinite first radius)."""
    l0 = FMN(norm="l0")
    eps = torch.tensor([10.0, 10.0, 10.0, 10.0, 1.0, 10.0])
    gamma = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.5, 0.25])
    adv = torch.tensor([True, True, False, False, True, True])
    best = torch.tensor([100.0, 100.0, 0.0, 0.0, 5.0, 6.0])
    got = torch.stack([l0._update_eps(eps[i : i + 1], adv[i : i + 1], adv[i : i + 1],
                                      best[i : i + 1], None, None, None, float(gamma[i]))[0]
                       for i in range(6)])  # fmt: skip
    torch.testing.assert_close(got, torch.tensor([9.0, 5.0, 11.0, 15.0, 0.0, 6.0]))
    # L2, gradient (3, 4): ||grad||_2 = 5, loss -2, ||delta|| = 0.1: linear estimate 0.5
    grad = torch.tensor([[3.0, 4.0]]).repeat(4, 1)
    loss, norms = torch.full((4,), -2.0), torch.full((4,), 0.1)
    eps = torch.tensor([1.0, 1.0, 0.2, math.inf])
    adv = torch.tensor([True, False, False, False])
    found = torch.tensor([True, True, False, False])
    best = torch.tensor([0.7, 0.7, math.inf, math.inf])
    for paper, want in ((False, [0.7, 1.1, 0.5, 0.5]), (True, [0.7, 1.1, 0.5, 0.5])):
        fmn = FMN(norm="l2", paper_radius=paper)
        got = fmn._update_eps(eps, adv, found, best, norms, loss, grad, 0.1)
        torch.testing.assert_close(got, torch.tensor(want))
    eps[2] = 1.0  # the growth wins over the linear estimate, unless paper_radius
    torch.testing.assert_close(FMN()._update_eps(eps, adv, found, best, norms, loss, grad, 0.1)[2],
                               torch.tensor(1.1))  # fmt: skip
    torch.testing.assert_close(
        FMN(paper_radius=True)._update_eps(eps, adv, found, best, norms, loss, grad, 0.1)[2],
        torch.tensor(0.5),
    )
    # Linf: the dual norm ||grad||_1 = 7 -> 0.1 + 2 / 7 (L1: ||grad||_inf = 4 -> 0.1 + 2 / 4)
    for norm, want in (("linf", 0.1 + 2 / 7), ("l1", 0.1 + 2 / 4)):
        got = FMN(norm=norm, paper_radius=True)._update_eps(
            eps[2:3], adv[2:3], found[2:3], best[2:3], norms[:1], loss[:1], grad[:1], 0.1
        )
        torch.testing.assert_close(got, torch.tensor([want]))


def test_fmn_steps_follow_algorithm_1(monkeypatch):
    """Never adversarial (z_1 - z_0 = 0.5 u + 0.05 v - 5): each step adds alpha_k g / ||g||_2,
    projects onto the ball of radius eps_k (the linear estimate, capped by the largest norm the
    box allows, ||max(x, 1 - x)||) and clips to the box; alpha_k and gamma_k are cosine-annealed
    from alpha_0 (gamma_0) to alpha_0 / 100 (gamma_final)."""
    model = affine([[0.0, 0.0], [0.5, 0.05]], [0.0, -5.0])
    x, y = torch.full((1, 2), 0.5, dtype=F64), torch.tensor([0])
    steps = 3
    fmn = FMN(norm="l2", steps=steps, alpha_init=1.0)
    gammas = []
    inner = fmn._update_eps

    def spy(eps, adv, found, best_norm, norms, loss, grad, gamma):
        gammas.append(gamma)
        return inner(eps, adv, found, best_norm, norms, loss, grad, gamma)

    monkeypatch.setattr(fmn, "_update_eps", spy)
    seen = record_iterates(monkeypatch, fmn)
    fmn.run(model, x, y)
    cos = [(1 + math.cos(math.pi * k / steps)) / 2 for k in range(steps)]
    assert gammas == pytest.approx([0.001 + (0.05 - 0.001) * c for c in cos], rel=1e-12)
    g = torch.tensor([[0.5, 0.05]], dtype=F64)
    g_hat = g / g.norm()
    largest = 0.5 * 2**0.5
    delta = torch.zeros_like(x)
    for k in range(steps - 1):
        torch.testing.assert_close(seen[k], x + delta, rtol=0, atol=1e-12)
        alpha = 0.01 + 0.99 * cos[k]
        step = delta + alpha * g_hat
        step = step * min(1.0, largest / float(step.norm()))
        delta = (x + step).clamp(0, 1) - x
    torch.testing.assert_close(seen[steps - 1], x + delta, rtol=0, atol=1e-12)


def test_fmn_found_is_cumulative_and_l0_grows_one_coordinate_at_a_time(monkeypatch):
    model, x = random_affine(), interior(4)
    y = model(x).argmax(1)
    fmn = FMN(norm="l0", steps=6)
    calls = []
    inner = fmn._update_eps

    def spy(eps, adv, found, *rest):
        calls.append((eps.clone(), adv.clone(), found.clone()))
        return inner(eps, adv, found, *rest)

    monkeypatch.setattr(fmn, "_update_eps", spy)
    seen = record_iterates(monkeypatch, fmn)
    fmn.run(model, x, y)
    torch.testing.assert_close(calls[0][0], torch.ones(4, dtype=F64))  # L0 starts at radius 1
    assert int((seen[1] - x).ne(0).sum(1).max()) <= 2  # then 2 coordinates at most
    ever = torch.zeros(4, dtype=torch.bool)
    for _, adv, found in calls:
        ever |= adv
        assert torch.equal(found, ever)
    assert ever.any() and any((f & ~a).any() for _, a, f in calls)  # found stays after leaving


def test_fmn_targeted_goes_through_another_class_to_the_target():
    """On the way to class 2 the iterates pass through class 1 (u around 0.7): only being
    classified as the target counts, so the attack goes on to u > 0.8."""
    model, x, y = Bump12(), torch.tensor([[0.5]], dtype=F64), torch.tensor([0])
    res = FMN(norm="linf", steps=20, alpha_init=0.05, targeted=True).run(model, x, y,
                                                                         torch.tensor([2]))  # fmt: skip
    assert res.success.all() and model(res.x_adv).argmax(1).item() == 2


def _scripted_objective(values):
    """An objective whose values are scripted call by call, with the gradient of z_0."""
    calls = iter(values)

    def objective(logits, y, target=None):
        z0 = logits[:, 0]
        return torch.full_like(z0, next(calls)) + (z0 - z0.detach())

    return objective


def _step_sizes_and_topk(monkeypatch, attack):
    """Record the directions APGD takes and the points it projects, in order."""
    events = []
    direction, project = attack._direction, attack._project

    def spy_direction(grad, x_adv, topk):
        d = direction(grad, x_adv, topk)
        events.append(("dir", x_adv.clone(), d.clone(), topk.clone()))
        return d

    def spy_project(x_adv, x):
        events.append(("proj", x_adv.clone()))
        return project(x_adv, x)

    monkeypatch.setattr(attack, "_direction", spy_direction)
    monkeypatch.setattr(attack, "_project", spy_project)
    return events


def _read_steps(events):
    """eta and the sparsity share of every step: the size of the move handed to the projection
    right after each direction, over the direction's L1 norm."""
    etas, topks = [], []
    for i, e in enumerate(events):
        if e[0] == "dir":
            _, xa, d, topk = e
            move = events[i + 1][1] - xa
            etas.append(float(move.abs().sum() / d.abs().sum()))
            topks.append(float(topk[0]))
    return etas, topks


def test_apgd_step_size_halves_on_the_papers_two_conditions(monkeypatch):
    """Croce & Hein 2020, Sec. 3.2, with scripted objective values (N = 20, checkpoints 5, 9,
    12, 14, 16, 18, 19; rho = 0.75): at 5, 3 of 5 steps increased (3 < 3.75: halve); at 9, 3 of
    4 (not < 3: keep, the best rose); at 12, 3 of 3 but the best is still 6 and eta unchanged
    (condition 2: halve); then flat values halve it at every checkpoint. eta_0 = 2 eps."""
    monkeypatch.setattr(Threat, "random_init", lambda self, x, generator=None: x.clone())
    values = [0, 1, 2, 3, 3, 3, 4, 5, 6, 2, 3, 4, 5] + [5] * 8
    model = affine([[1.0], [0.0]], [0.0, -5.0])  # never adversarial
    x, y = torch.full((1, 1), 0.5, dtype=F64), torch.tensor([0])
    attack = APGD("linf:0.1", steps=20, loss=_scripted_objective(values))
    events = _step_sizes_and_topk(monkeypatch, attack)
    attack.maximize(model, x, y)
    etas, _ = _read_steps(events)
    want = [0.2] * 5 + [0.1] * 7 + [0.05] * 2 + [0.025] * 2 + [0.0125] * 2 + [0.00625, 0.003125]
    assert etas == pytest.approx(want, rel=1e-9)


def test_l1_apgd_adapts_step_size_and_sparsity_at_its_checkpoints(monkeypatch):
    """Croce & Hein 2021, l1-APGD: checkpoints every 4 % of N; where the step size is reduced, k
    follows the L0 norm of the best point (k = ||x_best - x||_0 / 1.5, as a share of the d
    coordinates, at least 1) and eta becomes eps if that sparsity shrank below 0.95 times the
    last one, else eta / 1.5, kept in [eps / 10, eps]. eta_0 = eps and k_0 = 20 % (flat
    objective values: x_best is the start and every checkpoint reduces)."""
    model = affine([[1.0] * 10, [0.0] * 10], [0.0, -50.0])
    x, y, eps = torch.full((1, 10), 0.5, dtype=F64), torch.tensor([0]), 2.0
    attack = APGD(f"l1:{eps}", steps=50, loss=_scripted_objective([0.0] * 51))
    events = _step_sizes_and_topk(monkeypatch, attack)
    seen = record_iterates(monkeypatch, attack)
    attack.maximize(model, x, y)
    s0 = int((seen[0] - x).ne(0).sum())
    assert 2 <= s0 < 9  # a sparse start
    etas, topks = _read_steps(events)
    want_eta, want_k, eta = [], [], eps
    for k in range(50):
        if k >= 2 and k % 2 == 0:  # after checkpoint k: shrunk at the first one only
            eta = eps if k == 2 else max(eta / 1.5, eps / 10)
        want_eta.append(eta)
        want_k.append(0.2 if k < 2 else s0 / 15)
    assert etas == pytest.approx(want_eta, rel=1e-9)
    assert topks == pytest.approx(want_k, rel=1e-12)


class _Offset(Attack):
    """Returns x moved by ``offset`` along the first coordinate (nothing else)."""

    name = "offset"

    def __init__(self, threat, offset, **kw):
        super().__init__(threat, **kw)
        self.offset = offset

    def perturb(self, model, x, y, target, generator):
        out = x.clone()
        out[:, 0] += self.offset
        return out


def test_containment_tolerance_and_targeted_bookkeeping():
    """Containment: a float tolerance of 1e-5 (relative and absolute) around eps and [0, 1], not
    more. Targeted runs need target labels and count points already classified as the target as
    done; each run counts its own forward passes."""
    model = affine([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.58, 0.0, 0.0])
    x, y = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64), torch.tensor([0, 0])
    ok = _Offset("linf:0.1", 0.1 * (1 + 0.5e-5) + 0.5e-5).run(model, x, y)
    assert ok.success.tolist() == [True, False]  # u = 0.6 > 0.58: class 1
    with pytest.raises(AttackContainmentError, match=r"offset returned 2 of 2 points outside"):
        _Offset("linf:0.1", 0.1 * (1 + 2e-5) + 2e-5).run(model, x, y)
    with pytest.raises(AttackContainmentError, match=r"\[0, 1\]"):
        _Offset("l2:1", 0.55).run(model, x, y)  # 0.5 + 0.55 leaves the box, inside the ball
    targeted = _Offset("linf:0.1", 0.1, targeted=True)
    x[1] = torch.tensor([0.3, 0.7], dtype=F64)  # already class 2
    res = targeted.run(model, x, y, torch.tensor([1, 2]))
    assert res.success.tolist() == [True, True] and torch.equal(res.x_adv[1], x[1])
    assert res.forward_passes == 2 + 1  # the clean pass, and one candidate (point 0)
    assert targeted.run(model, x, y, torch.tensor([1, 2])).forward_passes == 3  # not summed
    with pytest.raises(RobustlabError, match="is targeted: pass target labels"):
        targeted.run(model, x, y)
    with pytest.raises(RobustlabError, match="target labels"):
        targeted.run(model, x, y, torch.tensor([1, 2, 0]))
    with pytest.raises(RobustlabError, match="create it with targeted=True"):
        _Offset("linf:0.1", 0.1).run(model, x, y, torch.tensor([1, 2]))
    scores = minimal_norm_score(torch.tensor([0.5, 0.2]), torch.tensor([True, False]))
    assert scores.tolist() == [-0.5, -math.inf]


# ----------------------------------------------------------------------------- PGD iterates


def test_pgd_l2_iterates_and_per_point_early_stop(monkeypatch):
    """Madry et al. 2018: x_{t+1} = P(x_t + alpha g / ||g||_2) from x (no random start); a point
    stops at its first adversarial iterate (it is no longer sent to the model), the others go on.
    Margin z_1 - z_0 = u - 0.7 + c_i: point 0 starts 0.05 from the boundary, point 1 far away."""
    model = affine([[0.0, 0.0], [1.0, 0.0]], [0.7, 0.0])
    x = torch.tensor([[0.62, 0.5], [0.1, 0.5]], dtype=F64)
    y = torch.tensor([0, 0])
    attack = PGD("l2:0.3", steps=4, step_size=0.06, random_start=False, loss="margin")
    seen = record_iterates(monkeypatch, attack)
    res = attack.run(model, x, y)
    assert [len(s) for s in seen] == [2, 2, 2, 1]  # point 0: adversarial after 2 steps, seen once
    u = [torch.tensor([0.62 + 0.06 * k, 0.1 + 0.06 * k], dtype=F64) for k in range(4)]
    for k, s in enumerate(seen):
        torch.testing.assert_close(s[:, 0], u[k][2 - len(s) :], rtol=0, atol=1e-12)
    torch.testing.assert_close(res.x_adv[:, 0], torch.tensor([0.62 + 0.12, 0.1 + 0.24], dtype=F64))
    assert res.success.tolist() == [True, False]


# ----------------------------------------------------------------------------- Square, Linf


def test_square_linf_start_window_and_greedy_acceptance(monkeypatch):
    """Andriushchenko et al. 2020, Alg. 1: the start is vertical stripes of +-eps (one sign per
    column and channel), clipped to the box; a window has side round(sqrt(p h w)) (a flat input:
    a run of round(p D) pixels); a proposal is kept only if it lowers the margin, so the result is
    the lowest-margin point queried."""
    attack = Square("linf:0.2", queries=40, seed=0)
    x = torch.rand(3, 2, 6, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    delta = attack._init_linf(x, torch.Generator().manual_seed(1))
    stripes = (x + delta - x).sign() * 0.2
    clipped = (x + stripes).clamp(0, 1) - x
    torch.testing.assert_close(delta, clipped, rtol=0, atol=1e-12)
    unclipped = (x + 0.2 <= 1) & (x - 0.2 >= 0)  # one sign per column and channel
    signs = torch.where(unclipped, delta.sign(), torch.zeros_like(delta))
    col = signs.abs().sum(2, keepdim=True)
    assert (signs.sum(2, keepdim=True).abs() == col).all() and (col > 0).all()
    assert attack._window(0.8, 6, 5, 2) == (5, 5) and attack._window(0.1, 6, 5, 2) == (2, 2)
    assert attack._window(0.001, 6, 5, 2) == (1, 1) and attack._window(0.5, 1, 40, 1) == (1, 20)
    assert attack._window(0.5, 1, 40, 3) == (1, 40)  # capped at the row
    w = random_affine(d=6, k=4).weight.detach()
    model, xs = affine(w, [100.0, 0.0, 0.0, 0.0]), interior(8, 6)  # never broken: all queried
    y = torch.zeros(8, dtype=torch.long)
    margins = []
    inner = attack._margin

    def spy(logits, yy, t):
        loss, hit = inner(logits, yy, t)
        margins.append(loss.detach().clone())
        return loss, hit

    monkeypatch.setattr(attack, "_margin", spy)
    res = attack.run(model, xs, y)
    assert len(margins) == 40  # the start and 39 proposals
    final = -margin_objective(model(res.x_adv).detach(), y)
    torch.testing.assert_close(final, torch.stack(margins).amin(0), rtol=0, atol=1e-12)
    assert (final < margins[0]).sum() >= 6  # most points improved on their start


def test_apgd_stops_each_point_at_its_first_adversarial_point(monkeypatch):
    """A point stops at its first adversarial iterate, which is returned. maximize attacks
    misclassified points too: one already adversarial at its random start takes no step."""
    model, x = random_affine(), interior(1)
    y = (model(x).argmax(1) + 1) % 4  # misclassified, and so is its start within eps = 0.01
    attack = APGD("linf:0.01", steps=5)
    seen = record_iterates(monkeypatch, attack)
    x_adv = attack.maximize(model, x, y)
    assert len(seen) == 1 and torch.equal(x_adv, seen[0])
    assert model(x_adv).argmax(1).item() != y.item()
    # a point that becomes adversarial at its first step stops there, and that step is returned
    monkeypatch.setattr(Threat, "random_init", lambda self, x, generator=None: x.clone())
    model = affine([[0.0], [1.0]], [0.55, 0.0])  # class 1 iff u > 0.55
    x, y = torch.tensor([[0.5]], dtype=F64), torch.tensor([0])
    attack = APGD("linf:0.1", steps=5)
    seen = record_iterates(monkeypatch, attack)
    x_adv = attack.maximize(model, x, y)
    assert len(seen) == 2 and torch.equal(x_adv, seen[1])
    torch.testing.assert_close(x_adv, torch.tensor([[0.6]], dtype=F64))


def test_cw_binary_search_over_the_constant(monkeypatch):
    """Carlini & Wagner 2017: c grows tenfold while no adversarial example is found, then is
    bisected between the largest failing and the smallest succeeding value. Read from the first
    Adam gradient of each search: at x = 0.5 (w = 0, zero distance gradient) it is c dL/dw with
    L = z_0 - z_1 = 0.7 - u, i.e. (-c / 2, 0). The minimiser u = 0.5 + c / 2 is adversarial iff
    c > 0.4: 1e-4, 1e-3, 1e-2, 0.1 fail, 1 succeeds, then (0.1 + 1) / 2."""
    firsts = []

    class Recording(torch.optim.Adam):
        def step(self, closure=None):
            (w,) = self.param_groups[0]["params"]
            if not self.state[w]:  # no Adam state yet: the first step of a search
                firsts.append(w.grad.detach().clone())
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    model = affine([[0.0, 0.0], [1.0, 0.0]], [0.7, 0.0])
    x, y = torch.full((1, 2), 0.5, dtype=F64), torch.tensor([0])
    CarliniWagnerL2(steps=100, lr=0.05, initial_const=1e-4, binary_search_steps=6).run(model, x, y)
    consts = [float(-2 * g[0, 0]) for g in firsts]
    assert consts == pytest.approx([1e-4, 1e-3, 1e-2, 0.1, 1.0, 0.55], rel=1e-6)
    assert all(float(g[0, 1]) == 0.0 for g in firsts)
