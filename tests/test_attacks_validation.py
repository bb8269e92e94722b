"""Attack configuration: a bad hyper-parameter is one RobustlabError that names it, and the
defaults are the values the papers publish."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab.attacks import (
    APGD,
    APGDT,
    BETA,
    EOT,
    FAB,
    FABT,
    FGSM,
    FMN,
    MD,
    PGD,
    AutoAttack,
    CarliniWagnerL2,
    DeepFool,
    Square,
    Transfer,
)
from robustlab.attacks.base import top_k_targets
from robustlab.errors import RobustlabError
from robustlab.threat import Threat

BAD = [
    (PGD, "steps", 0),
    (PGD, "step_size", 0.0),
    (PGD, "restarts", 0),
    (FGSM, "step_size", -0.1),
    (APGD, "steps", 0),
    (APGD, "rho", 0.0),
    (APGD, "momentum", 0.0),
    (APGD, "momentum", 1.5),
    (APGD, "l1_topk", -0.2),
    (APGD, "restarts", 0),
    (APGDT, "n_targets", 0),
    (BETA, "steps", 0),
    (BETA, "step_size", -1.0),
    (BETA, "n_targets", 0),
    (MD, "steps", 0),
    (MD, "stage1_steps", 200),
    (MD, "n_targets", 0),
    (Square, "queries", 0),
    (Square, "p_init", 0.0),
    (Square, "p_init", 1.5),
    (FAB, "steps", 0),
    (FAB, "eta", 0.0),
    (FAB, "beta", -0.9),
    (FAB, "alpha_max", -0.1),
    (FABT, "n_target_classes", 0),
    (DeepFool, "steps", 0),
    (DeepFool, "overshoot", -0.02),
    (DeepFool, "candidates", 1),
    (CarliniWagnerL2, "steps", 0),
    (CarliniWagnerL2, "binary_search_steps", 0),
    (CarliniWagnerL2, "lr", 0.0),
    (CarliniWagnerL2, "initial_const", 0.0),
    (CarliniWagnerL2, "confidence", -1.0),
    (FMN, "steps", 0),
    (FMN, "alpha_init", 0.0),
    (FMN, "alpha_final", -1.0),
    (FMN, "gamma_init", 0.0),
    (FMN, "gamma_final", -0.1),
    (EOT, "samples", 0),
]


def _build(cls, **kwargs):
    if cls is EOT:
        return EOT("linf:0.1", **kwargs)
    if cls in (FAB, FABT, DeepFool, CarliniWagnerL2, FMN):
        return cls(**kwargs)  # minimal-norm attacks: their default norm
    return cls("linf:0.1", **kwargs)


@pytest.mark.parametrize("cls,param,value", BAD, ids=[f"{c.__name__}-{p}={v}" for c, p, v in BAD])
def test_a_bad_hyper_parameter_is_an_error_that_names_it(cls, param, value):
    with pytest.raises(RobustlabError, match=rf"\b{param}\b"):
        _build(cls, **{param: value})


def test_top_k_targets_checks_k():
    logits = torch.tensor([[0.0, 2.0, 1.0, 3.0]])
    assert top_k_targets(logits, torch.tensor([3]), 9).tolist() == [[1, 2, 0]]  # at most K - 1
    with pytest.raises(RobustlabError, match=r"\bn_targets\b"):
        top_k_targets(logits, torch.tensor([3]), 0)


def test_defaults_are_the_published_hyper_parameters():
    # Madry et al. 2018: the MNIST setting, eps = 0.3 and 40 steps; step 2.5 eps / steps (their
    # rule of thumb to reach the boundary of the ball from any start)
    pgd = PGD()
    assert (pgd.threat, pgd.steps, pgd.restarts, pgd.random_start) == (Threat("linf", 0.3), 40, 1,
                                                                       True)  # fmt: skip
    assert pgd.step_size == pytest.approx(2.5 * 0.3 / 40) and pgd.early_stop
    assert PGD("l2:2", steps=10).step_size == pytest.approx(0.5)
    assert pgd.l1_sparsity == 0.95  # SLIDE (Tramer & Boneh 2019): the top 5 % of |grad|
    assert pgd.objective(torch.tensor([[2.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(
        math.log(1 + math.exp(-2.0))
    )  # cross-entropy
    # Croce & Hein 2020 (APGD): N = 100, rho = 0.75, momentum alpha = 0.75, one restart; the
    # targeted version over 9 classes; l1-APGD (Croce & Hein 2021): k = 20 % of the coordinates
    apgd = APGD()
    assert (apgd.steps, apgd.rho, apgd.momentum, apgd.restarts, apgd.seed) == (
        100,
        0.75,
        0.75,
        1,
        0,
    )
    assert apgd.early_stop and apgd.l1_topk == 0.2
    apgdt = APGDT()
    assert (apgdt.n_targets, apgdt.steps, apgdt.rho, apgdt.momentum) == (9, 100, 0.75, 0.75)
    assert (apgdt.restarts, apgdt.early_stop, apgdt.l1_topk, apgdt.seed) == (1, True, 0.2, 0)
    assert (apgdt.loss_name, apgdt.threat) == ("dlr", Threat("linf", 0.3))
    # Croce & Hein 2020 (FAB): 100 steps, eta = 1.05, beta = 0.9, alpha_max = 0.1; FAB-T 9 targets
    for fab in (FAB(), FABT()):
        assert (fab.steps, fab.eta, fab.beta, fab.alpha_max, fab.restarts) == (
            100,
            1.05,
            0.9,
            0.1,
            1,
        )
        assert fab.norm == "linf"
    assert FABT().n_target_classes == 9
    # Moosavi-Dezfooli et al. 2016: overshoot 0.02, at most 50 iterations, the 10 most likely classes
    df = DeepFool()
    assert (df.overshoot, df.steps, df.candidates, df.norm) == (0.02, 50, 10, "l2")
    # Carlini & Wagner 2017: Adam with lr 0.01, 9 binary search steps from c = 1e-3, kappa = 0,
    # abort early (their code; 1,000 instead of 10,000 iterations)
    cw = CarliniWagnerL2()
    assert (cw.lr, cw.binary_search_steps, cw.initial_const, cw.confidence) == (0.01, 9, 1e-3, 0.0)
    assert cw.steps == 1000 and cw.abort_early and cw.norm == "l2"
    # Pintor et al. 2021 (FMN): alpha_0 = 1 annealed to alpha_0 / 100, gamma 0.05 -> 0.001
    fmn = FMN()
    assert (fmn.steps, fmn.alpha_init, fmn.alpha_final) == (100, 1.0, 0.01)
    assert (fmn.gamma_init, fmn.gamma_final, fmn.norm, fmn.paper_radius) == (
        0.05,
        0.001,
        "l2",
        False,
    )
    # Andriushchenko et al. 2020 (Square): p_init = 0.8, 5,000 queries as in AutoAttack
    square = Square()
    assert (square.p_init, square.queries, square.restarts, square.seed) == (0.8, 5000, 1, 0)
    # Ma et al. 2022 (MD): 2 restarts (one per margin term), the first 1/5 of the steps on one term
    md = MD()
    assert (md.steps, md.stage1_steps, md.restarts, md.n_targets) == (100, 20, 2, None)
    assert MD(steps=50).stage1_steps == 10 and MD(steps=7).stage1_steps == 1  # floor(steps / 5)
    assert (md.loss_name, md.seed, md.threat) == ("margin", 0, Threat("linf", 0.3))
    # Robey et al. 2024 (BETA): every class, step 2.5 eps / steps
    beta = BETA()
    assert (beta.steps, beta.n_targets, beta.restarts) == (40, None, 1)
    assert beta.step_size == pytest.approx(2.5 * 0.3 / 40)
    assert (beta.loss_name, beta.keep_adversarial, beta.early_stop, beta.seed) == (
        "target-margin",
        True,
        True,
        0,
    )
    assert beta.threat == Threat("linf", 0.3)
    # Athalye et al. 2018 / AutoAttack rand: EOT over 20 draws of APGD-CE
    eot = EOT("linf:0.1")
    assert eot.samples == 20 and eot.attack.name == "apgd-ce" and eot.attack.seed == 0
    # the ensemble, transfer and wrappers are seeded (deterministic) by default
    assert AutoAttack().seed == 0 and AutoAttack().version == "standard"
    assert AutoAttack().threat == Threat("linf", 0.3)
    assert Transfer(surrogate=torch.nn.Identity()).seed == 0


def test_boundary_values_are_accepted():
    """Zero where the papers allow it (no overshoot, no confidence margin, no bias toward x, no
    final decay), plain momentum 1, the full window p = 1, two DeepFool candidates."""
    assert DeepFool(overshoot=0.0, candidates=2).overshoot == 0.0
    assert CarliniWagnerL2(confidence=0.0).confidence == 0.0
    assert FAB(alpha_max=0.0).alpha_max == 0.0
    assert FMN(gamma_final=0.0).gamma_final == 0.0
    assert APGD(momentum=1.0).momentum == 1.0
    assert Square(p_init=1.0).p_init == 1.0
    assert MD(steps=10, stage1_steps=0).stage1_steps == 0
    assert MD(steps=10, stage1_steps=10).stage1_steps == 10


SET = [
    (PGD, dict(steps=7, step_size=0.01, random_start=False, restarts=3, loss="margin",
               targeted=True, early_stop=False, l1_sparsity=0.9, seed=5)),
    (FGSM, dict(step_size=0.05, random_start=True, loss="margin", targeted=True, seed=5)),
    (APGD, dict(steps=7, restarts=2, loss="dlr", targeted=True, rho=0.6, momentum=0.5,
                early_stop=False, l1_topk=0.1, seed=5)),
    (APGDT, dict(n_targets=3, steps=7, restarts=2, loss="ce", rho=0.6, momentum=0.5,
                 early_stop=False, l1_topk=0.1, seed=5)),
    (BETA, dict(steps=7, step_size=0.01, n_targets=2, restarts=3, targeted=True, early_stop=False,
                keep_adversarial=False, seed=5)),
    (MD, dict(steps=10, stage1_steps=3, restarts=3, n_targets=2, targeted=True, seed=5)),
    (Square, dict(queries=7, p_init=0.5, restarts=2, targeted=True, seed=5, incremental=False)),
    (FAB, dict(norm="l2", steps=7, eta=1.1, beta=0.8, alpha_max=0.2, restarts=2, targeted=True,
               seed=5)),
    (FABT, dict(norm="l1", n_target_classes=3, steps=7, eta=1.1, beta=0.8, alpha_max=0.2,
                restarts=2, seed=5)),
    (DeepFool, dict(norm="linf", steps=7, overshoot=0.05, candidates=3, seed=5)),
    (CarliniWagnerL2, dict(steps=7, binary_search_steps=2, lr=0.1, initial_const=0.5,
                           confidence=0.3, abort_early=False, targeted=True, seed=5)),
    (FMN, dict(norm="l1", steps=7, alpha_init=2.0, alpha_final=0.5, gamma_init=0.1,
               gamma_final=0.01, paper_radius=True, targeted=True, seed=5)),
]  # fmt: skip


@pytest.mark.parametrize("cls,kwargs", SET, ids=[c.__name__ for c, _ in SET])
def test_every_argument_reaches_the_attack_and_its_config(cls, kwargs):
    attack = _build(cls, **kwargs)
    config = attack.config()
    for key, value in kwargs.items():
        name = "loss_name" if key == "loss" else key
        assert getattr(attack, name) == value, key
        assert config[name] == value, key
