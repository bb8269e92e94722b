"""Certified training methods: schedules, losses in closed form on linear models, gradients, the
tightness metric, and short real training runs whose verified accuracy must beat standard
training's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_certify_nets import random_net
from torch import nn

from robustlab.certify import LiResNetBlock, certify, margin_spec, propagation_tightness
from robustlab.errors import RobustlabError
from robustlab.models import build_model
from robustlab.training.method import Batch, StepContext
from robustlab.training.methods import METHODS
from robustlab.training.trainer import TrainConfig, Trainer

CERTIFIED = ["ibp", "crown-ibp", "cc-ibp", "mtl-ibp", "exp-ibp"]


def ctx(scale: float) -> StepContext:
    return StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1, eps_scale=scale)


def batch(shape, n=8, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(n, *shape, generator=g), torch.randint(k, (n,), generator=g),
                 torch.arange(n))


@pytest.mark.parametrize("name", [*CERTIFIED, "gaussian-noise"])
def test_every_method_gives_a_finite_differentiable_loss(name):
    model, shape = random_net(3, residual=True)
    model.train()
    k = model[-1].out_features
    b = batch(shape, k=k)
    kwargs = {} if name == "gaussian-noise" else {"threat": "linf:0.05"}
    method = METHODS.build(name, **kwargs)
    out = method.compute_loss(model, b, ctx(0.5))
    assert torch.isfinite(out.loss) and out.logits.shape == (8, k)
    out.loss.backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in model.parameters() if p.grad is not None)
    if name != "gaussian-noise":
        assert 0 < out.metrics["tightness"] <= 1 + 1e-5
        assert 0 <= out.metrics["verified_acc"] <= 1
        assert method.config()["threat"] == "linf:0.05"


def test_ibp_schedule_and_loss_in_closed_form():
    """On one Linear layer IBP is exact: the robust term is CE of the exact worst-case margins."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    b = batch((5,), k=3)
    method = METHODS.build("ibp", threat="linf:0.1", tightness_samples=0)
    out = method.compute_loss(layer, b, ctx(0.5))
    eps = 0.1 * 1.1 * 0.5
    assert out.metrics["eps"] == pytest.approx(eps)
    kappa = 1 - 0.5 * 0.5
    assert out.metrics["kappa"] == pytest.approx(kappa)
    spec = margin_spec(b.y, 3)
    a = spec @ layer.weight  # (N, K, D)
    lo, hi = (b.x - eps).clamp(0, 1), (b.x + eps).clamp(0, 1)
    worst = torch.where(a > 0, lo[:, None], hi[:, None])
    m = (a * worst).sum(-1) + spec @ layer.bias
    expected = kappa * F.cross_entropy(layer(b.x), b.y) + (1 - kappa) * F.cross_entropy(-m, b.y)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    clean = method.compute_loss(layer, b, ctx(0.0))
    torch.testing.assert_close(clean.loss, F.cross_entropy(layer(b.x), b.y))
    end = method.compute_loss(layer, b, ctx(1.0))
    assert end.metrics["kappa"] == pytest.approx(0.5) and end.metrics["eps"] == pytest.approx(0.11)


def test_crown_ibp_beta_schedule():
    model, shape = random_net(4, residual=False, batchnorm=False)
    b = batch(shape, k=model[-1].out_features)
    method = METHODS.build("crown-ibp", threat="linf:0.05", tightness_samples=0)
    assert method.compute_loss(model, b, ctx(0.25)).metrics["beta"] == pytest.approx(0.75)
    late = method.compute_loss(model, b, ctx(1.0))
    ibp = METHODS.build("ibp", threat="linf:0.05", eps_factor=1.0, tightness_samples=0)
    torch.testing.assert_close(late.loss, ibp.compute_loss(model, b, ctx(1.0)).loss)


def test_expressive_losses_at_the_ends_of_alpha():
    """alpha = 1 is the IBP loss for all three; alpha = 0 is the adversarial loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    b = batch((6,), k=3)
    ibp = METHODS.build("ibp", threat="linf:0.1", eps_factor=1.0, kappa_start=0.0, kappa_end=0.0,
                        tightness_samples=0).compute_loss(model, b, ctx(1.0)).loss
    losses = {}
    for name in ("cc-ibp", "mtl-ibp", "exp-ibp"):
        one = METHODS.build(name, threat="linf:0.1", alpha=1.0, tightness_samples=0)
        torch.testing.assert_close(one.compute_loss(model, b, ctx(1.0)).loss, ibp)
        torch.manual_seed(1)
        zero = METHODS.build(name, threat="linf:0.1", alpha=0.0, tightness_samples=0)
        losses[name] = zero.compute_loss(model, b, ctx(1.0)).loss
    torch.testing.assert_close(losses["cc-ibp"], losses["mtl-ibp"])
    torch.testing.assert_close(losses["exp-ibp"], losses["mtl-ibp"])
    assert float(losses["mtl-ibp"].detach()) < float(ibp.detach())  # the attack's loss is below the bound's


def test_tightness_metric_in_closed_form_for_a_deep_linear_network():
    torch.manual_seed(0)
    w = [torch.randn(7, 5), torch.randn(4, 7), torch.randn(3, 4)]
    model = nn.Sequential(*[nn.Linear(a.shape[1], a.shape[0], bias=False) for a in w])
    with torch.no_grad():
        for layer, weight in zip(model, w):
            layer.weight.copy_(weight)
    x = torch.rand(2, 5) * 0.5 + 0.25
    t = propagation_tightness(model, x, "linf:0.1")
    ones = torch.ones(5)
    expected = ((w[2] @ w[1] @ w[0]).abs() @ ones / (w[2].abs() @ w[1].abs() @ w[0].abs() @ ones))
    torch.testing.assert_close(t, expected.mean().expand(2))


def test_gaussian_noise_training_adds_noise():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    b = batch((4,), k=2)
    m = METHODS.build("gaussian-noise", sigma=0.5)
    torch.manual_seed(0)
    out = m.compute_loss(model, b, ctx(1.0))
    torch.manual_seed(0)
    noisy = b.x + 0.5 * torch.randn_like(b.x)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(noisy), b.y))
    with pytest.raises(RobustlabError, match="sigma"):
        METHODS.build("gaussian-noise", sigma=-1)


def test_bad_method_arguments():
    with pytest.raises(RobustlabError, match="kappa_end"):
        METHODS.build("ibp", kappa_end=2.0)
    with pytest.raises(RobustlabError, match="linf, l2"):
        METHODS.build("ibp", threat="l1:1")


@pytest.fixture(scope="module")
def digits_small():
    from robustlab.data import load_dataset

    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    return train, test


def train(method, data, epochs=10, seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp", data.input_shape, 10, hidden=(64,))
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, optimizer="adam", weight_decay=0.0,
                      eps_ramp_epochs=4.0, schedule="constant", seed=seed)
    history = Trainer(model, method, data, cfg, progress=False).fit()
    return model.eval(), history


def test_ibp_training_beats_standard_training_on_verified_accuracy(digits_small):
    train_set, test_set = digits_small
    eps = "linf:0.1"
    robust, history = train(METHODS.build("ibp", threat=eps, tightness_samples=8), train_set)
    plain, _ = train(METHODS.build("standard"), train_set)
    assert "train_tightness" in history[-1] and "train_verified_acc" in history[-1]
    assert history[-1]["train_tightness"] > history[0]["train_tightness"]
    r_ibp = certify(robust, test_set, "ibp", eps)
    p_ibp = certify(plain, test_set, "ibp", eps)
    r_crown = certify(robust, test_set, "crown", eps)
    assert r_ibp.certified_accuracy > p_ibp.certified_accuracy + 0.2
    assert r_crown.certified_accuracy >= r_ibp.certified_accuracy
    assert r_ibp.clean_accuracy > 0.6


def test_emma_training_with_liresnet_blocks_and_its_state(digits_small):
    train_set, _ = digits_small
    small = train_set.head(256)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), LiResNetBlock(4), nn.ReLU(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-3, optimizer="adam", weight_decay=0.0,
                      eps_ramp_epochs=1.0)
    method = METHODS.build("emma", threat="l2:0.3")
    history = Trainer(model, method, small, cfg, progress=False).fit()
    assert history[-1]["train_lipschitz"] > 0 and "train_certified_acc_estimate" in history[-1]
    state = method.state_dict()
    assert any(k.startswith("power.") for k in state)
    fresh = METHODS.build("emma", threat="l2:0.3")
    Trainer(model, fresh, small, cfg, progress=False)  # setup creates the vectors: strict load
    fresh.load_state_dict(state)
    res = certify(model.eval(), small, "lipschitz", "l2:0.05")
    assert 0 <= res.certified_accuracy <= res.clean_accuracy
    assert res.summary["lipschitz"] >= history[-1]["train_lipschitz"] * 0.5


def test_crown_ibp_training_mixes_the_bounds_by_beta():
    """Zhang et al. 2020, eq. 8: m = beta m_CROWN-IBP + (1 - beta) m_IBP, each computed alone."""
    from robustlab.certify import crown_ibp_bounds, ibp_bounds

    model, shape = random_net(4, residual=False, batchnorm=False)
    k = model[-1].out_features
    b = batch(shape, k=k)
    threat = "linf:0.05"
    spec = margin_spec(b.y, k)
    with torch.no_grad():
        crown = crown_ibp_bounds(model, b.x, threat, spec)
        ibp = ibp_bounds(model, b.x, threat, spec)
        assert (crown - ibp).abs().max() > 0.02  # the two bounds differ on this net
        logits = model(b.x)
        method = METHODS.build("crown-ibp", threat=threat, tightness_samples=0)
        for beta in (1.0, 0.0, 0.5, 0.25):
            loss, m = method.robust_loss(model, b, method.threat, {"beta": beta, "kappa": 1.0},
                                         logits)
            torch.testing.assert_close(m, beta * crown + (1 - beta) * ibp, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(loss, F.cross_entropy(-m, b.y, reduction="none"))
        # through compute_loss: beta follows the ramp (1 -> 0), here 0.5 at half the ramp
        out = method.compute_loss(model, b, ctx(0.5))
        half = METHODS.build("crown-ibp", threat=threat, tightness_samples=0).threat.with_eps(0.025)
        c_half = crown_ibp_bounds(model, b.x, half, spec)
        i_half = ibp_bounds(model, b.x, half, spec)
        robust = F.cross_entropy(-(0.5 * c_half + 0.5 * i_half), b.y)
        kappa = out.metrics["kappa"]
        expected = kappa * F.cross_entropy(logits, b.y) + (1 - kappa) * robust
        assert out.metrics["beta"] == pytest.approx(0.5)
        torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
