"""The defining equations of the certified-training losses, on one Linear layer where every
bound is exact and computable by hand:

* IBP / CROWN-IBP (Gowal et al. 2018; Zhang et al. 2020): ``kappa CE(z) + (1 - kappa) CE(-m)``
  with the margin lower bounds ``m_j = z_y - z_j - eps ||w_y - w_j||_1`` (L_inf), ``kappa`` ramped
  linearly with the eps ramp, training radius ``eps_factor * eps * ramp``;
* the expressive losses (De Palma et al. 2024): a PGD point of one 1.25 eps step from a random
  start or K steps of 2.5 eps / K, combined with the IBP margins by ``alpha``;
* EMMA (Hu et al. 2023): CE on ``z_j + eps_j K_yj`` with ``K_yj = ||w_y - w_j||_2`` and
  ``eps_j = clip((z_y - z_j) / (eps K_yj), 0.01, 1) eps``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.training.method import Batch, StepContext
from robustlab.training.methods import METHODS, certified
from robustlab.training.methods.shared import fixed_adversarial

W = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, -1.0, 2.0], [-1.0, 0.5, 0.0, 1.0]])
B = torch.tensor([0.1, -0.2, 0.3])


def _linear() -> nn.Module:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(W)
        layer.bias.copy_(B)
    return nn.Sequential(layer)


def _batch() -> Batch:
    x = torch.tensor([[0.4, 0.5, 0.6, 0.3], [0.7, 0.3, 0.4, 0.5], [0.5, 0.6, 0.3, 0.4],
                      [0.3, 0.4, 0.7, 0.6]])
    return Batch(x, torch.tensor([2, 1, 1, 1]), torch.arange(4))


def _ctx(eps_scale: float = 1.0, step: int = 0) -> StepContext:
    return StepContext(epoch=0, step=step, epochs=1, steps_per_epoch=10, eps_scale=eps_scale)


def _margins(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact L_inf lower bounds of z_y - z_j over the ball (inside [0, 1] here)."""
    z = x @ W.T + B
    d = W[y].unsqueeze(1) - W.unsqueeze(0)  # (N, K, d): w_y - w_j
    return z.gather(1, y[:, None]) - z - eps * d.abs().sum(2)


def _verified(m: torch.Tensor, y: torch.Tensor) -> float:
    return float((m.scatter(1, y[:, None], math.inf).min(1).values > 0).float().mean())


# ------------------------------------------------------------------------------ IBP family
@pytest.mark.parametrize("eps_scale", [1.0, 0.5])
def test_ibp_loss_mixes_clean_and_bound_cross_entropy(eps_scale):
    method = METHODS.build("ibp", threat="linf:0.1", kappa_start=0.9, kappa_end=0.3,
                           tightness_samples=0)
    batch = _batch()
    out = method.compute_loss(_linear(), batch, _ctx(eps_scale))
    eps = 0.1 * 1.1 * eps_scale  # Gowal et al.: trained at 1.1 eps, scaled by the eps ramp
    kappa = 0.9 + (0.3 - 0.9) * eps_scale
    m = _margins(batch.x, batch.y, eps)
    clean = F.cross_entropy(batch.x @ W.T + B, batch.y)
    robust = F.cross_entropy(-m, batch.y)
    assert float(out.loss.detach()) == pytest.approx(float(kappa * clean + (1 - kappa) * robust), rel=1e-5)
    assert out.metrics["eps"] == pytest.approx(eps)
    assert out.metrics["kappa"] == pytest.approx(kappa)
    assert out.metrics["robust_loss"] == pytest.approx(float(robust), rel=1e-5)
    assert out.metrics["verified_acc"] == _verified(m, batch.y)
    assert "tightness" not in out.metrics
    torch.testing.assert_close(out.logits, batch.x @ W.T + B)


def test_ibp_verified_accuracy_counts_strictly_positive_bounds():
    """A sample whose worst margin is 0 at the radius is not verified; one above is."""
    batch = _batch()
    x, y = batch.x[2:3], batch.y[2:3]  # correctly classified
    gaps = _margins(x, y, 0.0).scatter(1, y[:, None], math.inf)
    slopes = (W[y].unsqueeze(1) - W.unsqueeze(0)).abs().sum(2).scatter(1, y[:, None], 1.0)
    radius = float((gaps / slopes).min())  # where the worst bound reaches 0
    assert radius > 0
    for factor, expected in ((0.999, 1.0), (1.001, 0.0)):
        method = METHODS.build("ibp", threat=f"linf:{radius * factor}", eps_factor=1.0,
                               tightness_samples=0)
        out = method.compute_loss(_linear(), Batch(x, y, torch.arange(1)), _ctx())
        assert out.metrics["verified_acc"] == expected


def test_bound_training_at_radius_zero_is_clean_training():
    method = METHODS.build("crown-ibp", threat="linf:0.1", tightness_samples=0)
    batch = _batch()
    out = method.compute_loss(_linear(), batch, _ctx(0.0))
    z = batch.x @ W.T + B
    assert float(out.loss.detach()) == pytest.approx(float(F.cross_entropy(z, batch.y)), rel=1e-6)
    assert out.metrics["robust_loss"] == pytest.approx(float(out.loss.detach()), rel=1e-6)
    assert out.metrics["verified_acc"] == float((z.argmax(1) == batch.y).float().mean())
    assert out.metrics["eps"] == 0.0


def test_crown_ibp_on_a_linear_layer_equals_the_exact_bound():
    """CROWN and IBP are both exact on one Linear layer, so any beta gives the exact margins."""
    batch = _batch()
    for beta in (1.0, 0.4):
        method = METHODS.build("crown-ibp", threat="linf:0.1", eps_factor=1.0, kappa_start=0.0,
                               kappa_end=0.0, beta_start=beta, beta_end=beta,
                               tightness_samples=0)
        out = method.compute_loss(_linear(), batch, _ctx())
        m = _margins(batch.x, batch.y, 0.1)
        assert float(out.loss.detach()) == pytest.approx(float(F.cross_entropy(-m, batch.y)), rel=1e-5)
        assert out.metrics["beta"] == beta


def test_tightness_is_measured_on_the_first_samples_every_k_steps(monkeypatch):
    calls = []

    def tightness(model, x, threat, y):
        calls.append((x.shape[0], None if y is None else y.tolist(), str(threat)))
        return torch.full((x.shape[0],), float(len(calls)))

    monkeypatch.setattr(certified, "propagation_tightness", tightness)
    method = METHODS.build("ibp", threat="linf:0.1", tightness_samples=2, tightness_every=3)
    batch = _batch()
    seen = [method.compute_loss(_linear(), batch, _ctx(step=s)).metrics["tightness"]
            for s in (1, 2, 3, 4, 6)]
    # measured at the first call, then at steps divisible by 3; cached in between
    assert seen == [1.0, 1.0, 2.0, 2.0, 3.0]
    assert calls[0] == (2, batch.y[:2].tolist(), "linf:0.1")  # the target radius, not 1.1 eps


# -------------------------------------------------------------------------- expressive losses
@pytest.mark.parametrize(("steps", "step_size"), [(1, 1.25 * 0.1), (4, 2.5 * 0.1 / 4)])
def test_expressive_inner_attack_schedule(monkeypatch, steps, step_size):
    """One FGSM-RS step of 1.25 eps, or K PGD steps of 2.5 eps / K, from a random start."""
    seen = {}
    real = certified.PGD

    def pgd(threat, **kwargs):
        seen.update(threat=str(threat), **kwargs)
        return real(threat, **kwargs)

    monkeypatch.setattr(certified, "PGD", pgd)
    method = METHODS.build("cc-ibp", threat="linf:0.1", eps_factor=1.0, attack_steps=steps)
    batch = _batch()
    x_adv = method.adversarial(_linear(), batch, method.threat)
    assert seen == {"threat": "linf:0.1", "steps": steps, "step_size": pytest.approx(step_size),
                    "random_start": True, "early_stop": False}
    assert float((x_adv - batch.x).abs().max()) <= 0.1 + 1e-6


def _expressive(name: str, alpha: float):
    method = METHODS.build(name, threat="linf:0.1", eps_factor=1.0, alpha=alpha,
                           tightness_samples=0)
    batch = _batch()
    x_adv = (batch.x + 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0])).clamp(0, 1)
    with fixed_adversarial(method, lambda model, b, threat: x_adv):
        out = method.compute_loss(_linear(), batch, _ctx())
    z_adv = x_adv @ W.T + B
    m = _margins(batch.x, batch.y, 0.1)
    return out, z_adv, m, batch.y


def test_cc_ibp_is_ce_of_the_convex_combination_of_logit_differences():
    out, z_adv, m, y = _expressive("cc-ibp", 0.3)
    d_adv = z_adv.gather(1, y[:, None]) - z_adv
    expected = F.cross_entropy(-(0.7 * d_adv + 0.3 * m), y)
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)  # kappa = 0: no clean CE
    assert out.metrics["verified_acc"] == _verified(m, y)


def test_mtl_ibp_is_the_convex_combination_of_the_two_losses():
    out, z_adv, m, y = _expressive("mtl-ibp", 0.3)
    adv = F.cross_entropy(z_adv, y, reduction="none")
    ver = F.cross_entropy(-m, y, reduction="none")
    assert float(out.loss.detach()) == pytest.approx(float((0.7 * adv + 0.3 * ver).mean()), rel=1e-5)


def test_exp_ibp_is_the_geometric_combination_of_the_two_losses():
    out, z_adv, m, y = _expressive("exp-ibp", 0.3)
    adv = F.cross_entropy(z_adv, y, reduction="none")
    ver = F.cross_entropy(-m, y, reduction="none")
    assert float(out.loss.detach()) == pytest.approx(float((adv**0.7 * ver**0.3).mean()), rel=1e-5)


# ------------------------------------------------------------------------------------ EMMA
def _emma_expected(x, y, eps):
    z = x @ W.T + B
    k = (W[y].unsqueeze(1) - W.unsqueeze(0)).norm(dim=2)  # K_yj, 0 at j = y
    gap = z.gather(1, y[:, None]) - z
    scale = (gap / (eps * k).clamp_min(1e-8)).clamp(0.01, 1.0)
    loss = F.cross_entropy(z + scale * eps * k, y)
    worst = (gap - eps * k).scatter(1, y[:, None], math.inf).min(1).values
    return loss, float((worst > 0).float().mean())


@pytest.mark.parametrize(("threat", "l2_eps"), [("l2:0.3", 0.3), ("linf:0.05", 0.05 * 2.0)])
def test_emma_loss_and_certified_estimate(threat, l2_eps):
    """An L_inf ball of radius eps in d = 4 dimensions lies in the L2 ball of eps sqrt(d)."""
    method = METHODS.build("emma", threat=threat, iterations=50)
    batch = _batch()
    out = method.compute_loss(_linear(), batch, _ctx(0.5))
    loss, certified_acc = _emma_expected(batch.x, batch.y, 0.5 * l2_eps)
    assert float(out.loss.detach()) == pytest.approx(float(loss), rel=1e-4)
    assert out.metrics["certified_acc_estimate"] == certified_acc
    assert out.metrics["lipschitz"] == pytest.approx(float(torch.linalg.matrix_norm(W, 2)),
                                                     rel=1e-3)
    torch.testing.assert_close(out.logits, batch.x @ W.T + B)


def test_emma_certified_estimate_needs_a_strictly_positive_margin():
    batch = _batch()
    x, y = batch.x[2:3], batch.y[2:3]  # correctly classified
    z = x @ W.T + B
    k = (W[y].unsqueeze(1) - W.unsqueeze(0)).norm(dim=2)
    radius = float(((z.gather(1, y[:, None]) - z) / k).scatter(1, y[:, None], math.inf).min())
    assert radius > 0
    for factor, expected in ((0.999, 1.0), (1.001, 0.0)):
        method = METHODS.build("emma", threat=f"l2:{radius * factor}")
        out = method.compute_loss(_linear(), Batch(x, y, torch.arange(1)), _ctx())
        assert out.metrics["certified_acc_estimate"] == expected


def test_emma_at_radius_zero_is_clean_cross_entropy():
    method = METHODS.build("emma", threat="l2:0.3")
    batch = _batch()
    out = method.compute_loss(_linear(), batch, _ctx(0.0))
    z = batch.x @ W.T + B
    assert float(out.loss.detach()) == pytest.approx(float(F.cross_entropy(z, batch.y)), rel=1e-6)
    assert set(out.metrics) == {"lipschitz"}
    torch.testing.assert_close(out.logits, z)


def test_emma_rejects_batch_statistics():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).train()
    with pytest.raises(RobustlabError, match="BatchNorm"):
        METHODS.build("emma").compute_loss(model, _batch(), _ctx())


# ------------------------------------------------------------------------------- VAT, IAT
def test_vat_loss_is_labelled_ce_plus_alpha_lds():
    """Miyato et al. 2018: CE on the labelled samples + alpha KL(p(x) || p(x + r_vadv)) on all."""
    from robustlab.training.methods.vat import UNLABELLED

    method = METHODS.build("vat", threat="l2:0.5", alpha=2.0)
    batch = _batch()
    batch = Batch(batch.x, torch.tensor([2, UNLABELLED, 1, UNLABELLED]), batch.index)
    x_adv = (batch.x + 0.2).clamp(0, 1)
    with fixed_adversarial(method, x_adv):
        out = method.compute_loss(_linear(), batch, _ctx())
    z, z_adv = batch.x @ W.T + B, x_adv @ W.T + B
    ce = F.cross_entropy(z[[0, 2]], torch.tensor([2, 1]))
    p = z.softmax(1)
    lds = (p * (p.log() - z_adv.log_softmax(1))).sum(1).mean()
    assert float(out.loss.detach()) == pytest.approx(float(ce + 2.0 * lds), rel=1e-5)
    assert out.metrics == pytest.approx({"ce": float(ce), "lds": float(lds), "labelled": 0.5})
    torch.testing.assert_close(out.logits, z)


def test_iat_averages_the_clean_and_adversarial_mixup_losses():
    """Lamb et al. 2019: 0.5 Mixup-loss(clean) + 0.5 Mixup-loss(adversarial)."""
    method = METHODS.build("iat", threat="linf:0.1")
    batch = _batch()
    with fixed_adversarial(method, (batch.x + 0.1).clamp(0, 1)):
        out = method.compute_loss(_linear(), batch, _ctx())
    assert set(out.metrics) == {"clean_mix", "adv_mix"}
    half = 0.5 * out.metrics["clean_mix"] + 0.5 * out.metrics["adv_mix"]
    assert float(out.loss.detach()) == pytest.approx(half, rel=1e-6)
    assert out.metrics["clean_mix"] != out.metrics["adv_mix"]


def test_emma_without_a_final_linear_layer_uses_sqrt2_times_the_network_constant():
    """Without a last Linear layer, K_yj = sqrt(2) L for every j != y (Hu et al. 2023)."""
    model = nn.Sequential(_linear()[0], nn.ReLU())
    method = METHODS.build("emma", threat="l2:0.1", iterations=50)
    batch = _batch()
    out = method.compute_loss(model, batch, _ctx())
    z = (batch.x @ W.T + B).relu()
    k = math.sqrt(2.0) * torch.linalg.matrix_norm(W, 2) * torch.ones(4, 3)
    k = k.scatter(1, batch.y[:, None], 0.0)
    gap = z.gather(1, batch.y[:, None]) - z
    scale = (gap / (0.1 * k).clamp_min(1e-8)).clamp(0.01, 1.0)
    expected = F.cross_entropy(z + scale * 0.1 * k, batch.y)
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-4)


def test_mutual_at_loss_by_hand_with_one_peer():
    """Liu et al. 2021, two models: L_i = mean_j [(1 - a) CE(f_i(x_j), y) + a KL(p_peer || p_i)]
    over both models' adversarial points x_j, summed over i; the logged logits are the main
    model's on its own points."""
    torch.manual_seed(0)
    model = _linear()
    method = METHODS.build("mutual-at", threat="linf:0.1", peers=1, alpha=0.3)
    method.attach(model)
    peer = method.peer_models[0]
    batch = _batch()
    points = {id(model): (batch.x + 0.05).clamp(0, 1), id(peer): (batch.x - 0.05).clamp(0, 1)}
    with fixed_adversarial(method, lambda m, b, ctx: points[id(m)]):
        out = method.compute_loss(model, batch, _ctx())
    models = [model, peer]
    xs = [points[id(model)], points[id(peer)]]
    total = 0.0
    for i, f in enumerate(models):
        other = models[1 - i]
        terms = []
        for x in xs:
            ce = F.cross_entropy(f(x), batch.y)
            p = other(x).softmax(1)
            kl = (p * (p.log() - f(x).log_softmax(1))).sum(1).mean()
            terms.append(0.7 * ce + 0.3 * kl)
        li = sum(terms) / 2
        assert out.metrics[f"loss_model{i}"] == pytest.approx(float(li.detach()), rel=1e-5)
        total = total + li
    assert float(out.loss.detach()) == pytest.approx(float(total), rel=1e-5)
    torch.testing.assert_close(out.logits, model(xs[0]))


def test_mutual_at_without_peers_says_how_to_create_them():
    method = METHODS.build("mutual-at", threat="linf:0.1")
    with pytest.raises(RobustlabError, match=r"setup\(trainer\) or attach\(model\)"):
        method.compute_loss(_linear(), _batch(), _ctx())
