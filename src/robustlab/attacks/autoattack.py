"""AutoAttack (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"; METHODS.md B6).

An ensemble of complementary attacks run one after the other, each on the points that are still
robust, so the result is the per-sample worst case over the attacks:

- ``standard`` (Linf, L2): APGD-CE -> APGD-T (9 targets) -> FAB-T (9 targets) -> Square (5,000
  queries), one restart each; L1: APGD-CE (5 restarts) -> APGD-T (5 targets) with l1-APGD
  (Croce & Hein 2021; without the reference code's larger-eps warm start);
- ``plus``: APGD-CE, APGD-DLR, FAB, Square with 5 restarts, then APGD-T and FAB-T;
- ``rand`` (randomized defences): APGD-CE and APGD-DLR with EOT over 20 draws;
- ``custom``: any list of registered attack names (with arguments) or :class:`Attack` objects.

Attacks are looked up by registry name. A point counts as broken only if the model misclassifies
the returned point; every attack's points are checked again to lie inside the threat (an attack
that returns one outside raises :class:`~robustlab.attacks.base.AttackContainmentError`). The
result records, per attack, the points it received, the points still robust after it, its time and
its forward passes (``extras["attacks"]``), and the fast paths of all of them merged
(``extras["fast_paths"]``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from robustlab.attacks.base import Attack, AttackResult, check_containment
from robustlab.attacks.best import BestPoints
from robustlab.attacks.objectives import adversarial_score, is_adversarial
from robustlab.attacks.params import fixed, param
from robustlab.attacks.registry import ATTACKS
from robustlab.errors import RobustlabError
from robustlab.runtime.fastpaths import FastPathGuard
from robustlab.runtime.modes import eval_mode
from robustlab.validation import check_inputs, check_labels

AttackSpec = tuple[str, dict[str, Any]]

_STANDARD: list[AttackSpec] = [
    ("apgd-ce", {}),
    ("apgd-t", {"n_targets": 9}),
    ("fab-t", {"n_target_classes": 9}),
    ("square", {"queries": 5000}),
]
_STANDARD_L1: list[AttackSpec] = [("apgd-ce", {"restarts": 5}), ("apgd-t", {"n_targets": 5})]
_PLUS: list[AttackSpec] = [
    ("apgd-ce", {"restarts": 5}),
    ("apgd-dlr", {"restarts": 5}),
    ("fab", {"restarts": 5}),
    ("square", {"queries": 5000, "restarts": 5}),
    ("apgd-t", {"n_targets": 9}),
    ("fab-t", {"n_target_classes": 9}),
]
_RAND: list[AttackSpec] = [
    ("eot", {"attack": "apgd-ce", "samples": 20}),
    ("eot", {"attack": "apgd-dlr", "samples": 20}),
]
VERSIONS = ("standard", "plus", "rand", "custom")


def version_attacks(version: str, norm: str) -> list[AttackSpec]:
    """The attack list of an AutoAttack version for a norm (Croce & Hein 2020, Sec. 4)."""
    if version == "standard":  # L1: 5 restarts of APGD-CE, 5 targets (Croce & Hein 2021)
        return _STANDARD_L1 if norm == "l1" else list(_STANDARD)
    if version == "plus":
        return [s for s in _PLUS if not (norm == "l1" and s[0] == "square")]
    if version == "rand":
        return list(_RAND)
    raise RobustlabError(f"Unknown AutoAttack version '{version}'; known: {', '.join(VERSIONS)}.")


def _label(name: str, kwargs: dict[str, Any]) -> str:
    return f"{kwargs['attack']}+eot" if name == "eot" else name


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """AutoAttack (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square on the points still robust."""

    name = "autoattack"

    threat = param("linf:0.3")
    version: str = param("standard")
    #: the attacks (``version="custom"``): names, ``(name, kwargs)`` or :class:`Attack` objects;
    #: after ``__init__`` the ``(label, attack)`` pairs run in order
    attacks: Sequence[str | AttackSpec | Attack] | None = param(None)
    attack_args: dict[str, dict[str, Any]] | None = param(None)
    loss = fixed("ce")
    targeted = fixed(False)
    restarts = fixed(1)
    seed: int | None = param(0)

    def _check_params(self) -> None:
        version, attacks = self.version, self.attacks
        if version not in VERSIONS:
            raise RobustlabError(
                f"Unknown AutoAttack version '{version}'; known: {', '.join(VERSIONS)}."
            )
        if (version == "custom") != (attacks is not None):
            raise RobustlabError("AutoAttack takes an attack list exactly when version='custom'.")
        specs: list[str | AttackSpec | Attack] = (
            list(attacks) if attacks is not None else version_attacks(version, self.threat.norm)
        )
        if not specs:
            raise RobustlabError("AutoAttack needs at least one attack.")
        attack_args = self.attack_args or {}
        built: list[tuple[str, Attack]] = []
        for spec in specs:
            if isinstance(spec, Attack):
                built.append((spec.name, spec))
                continue
            name, kwargs = (spec, {}) if isinstance(spec, str) else spec
            kwargs = {**kwargs, **attack_args.get(name, {})}
            attack = ATTACKS.build(name, threat=self.threat, seed=self.seed, **kwargs)
            built.append((_label(name, kwargs), attack))
        self.attacks = built

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threat": str(self.threat),
            "version": self.version,
            "seed": self.seed,
            "attacks": [a.config() for _, a in self.attacks],
        }

    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None = None
    ) -> AttackResult:
        """Run the attacks in order, each on the points still robust."""
        check_inputs(x)
        y = check_labels(y, x.shape[0])
        if target is not None:
            raise RobustlabError("AutoAttack is untargeted (APGD-T and FAB-T pick their targets).")
        self.forward_passes = 0
        self._fast = FastPathGuard()
        stats: list[dict[str, Any]] = []
        with eval_mode(model):
            logits = self._predict(model, x)
            check_labels(y, x.shape[0], num_classes=logits.shape[1])
            clean_correct = logits.argmax(1) == y
            best = BestPoints(x, adversarial_score(logits, y), ~clean_correct)
            for label, attack in self.attacks:
                todo = best.remaining()
                entry = {"attack": label, "points_in": int(todo.numel()), "time_s": 0.0}
                if todo.numel() > 0:
                    t0 = time.perf_counter()
                    res = attack.run(model, x[todo], y[todo])
                    cand = res.x_adv.detach()
                    check_containment(f"{self.name} ({label})", cand, x[todo], self.threat)
                    self._fast_paths.merge(res.extras.get("fast_paths", {}))
                    cand_logits = self._predict(model, cand)
                    hit = is_adversarial(cand_logits, y[todo])
                    score = adversarial_score(cand_logits, y[todo])
                    best.offer(todo, cand, score, hit, prefer_done=True)  # a hit is always kept
                    entry["time_s"] = time.perf_counter() - t0
                    entry["forward_passes"] = res.forward_passes
                    self.forward_passes += res.forward_passes
                entry["points_out"] = int((~best.done).sum())
                stats.append(entry)
        x_adv, broken = best.x, best.done
        check_containment(self.name, x_adv, x, self.threat)
        return AttackResult(
            x_adv=x_adv,
            success=broken,
            clean_correct=clean_correct,
            norms=self.threat.norms(x_adv - x),
            threat=self.threat,
            forward_passes=self.forward_passes,
            extras={
                "attacks": stats,
                "version": self.version,
                "fast_paths": self._fast_paths.to_dict(),
            },
        )

    def perturb(self, model, x, y, target, generator):
        return self.run(model, x, y, target).x_adv
