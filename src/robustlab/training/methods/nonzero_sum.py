"""BETA-AT: adversarial training as a non-zero-sum game (Robey et al., ICLR 2024)."""

from __future__ import annotations

from robustlab.attacks import BETA, Attack
from robustlab.threat import Threat
from robustlab.training.methods.adversarial import PGDAT
from robustlab.training.methods.registry import METHODS


@METHODS.register("beta-at")
class BETAAT(PGDAT):
    """BETA adversarial training (Robey, Latorre, Pappas, Hassani & Cevher, ICLR 2024,
    "Adversarial training should be cast as a non-zero-sum game"): the attacker and the defender
    optimise different objectives. The attacker maximises, for each class ``j != y``, the negative
    margin ``z_j(x') - z_y(x')`` and keeps the best of the K - 1 points,

        x* = x'_{j*},  x'_j = argmax_{x' in B(x)} [z_j(x') - z_y(x')],

    and the defender minimises ``CE(f(x*), y)`` (the inherited PGD-AT loss, ``loss`` selectable).
    The attacker is :class:`robustlab.attacks.BETA` as in the paper's Algorithm 1: all K - 1
    classes, ``steps`` ascent steps each without early stopping, ``j* = argmax_j M_j(x'_j)``
    (batched over the classes, random starts from the trainer's seeded global RNG)."""

    name = "beta-at"

    def make_attack(self, threat: Threat) -> Attack:
        return BETA(
            threat, steps=self.steps, step_size=self.step_size, early_stop=False,
            keep_adversarial=False, seed=None,
        )  # fmt: skip
