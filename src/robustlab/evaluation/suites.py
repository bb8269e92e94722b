"""Evaluation suites: named attack lists for the common protocols (``robustlab evaluate --suite``).

A suite fixes the attacks and their arguments; the threats come from the caller. Its
:meth:`Suite.stages` are the evaluation stages it composes (:mod:`robustlab.evaluation.pipeline`):
the adversarial stage, whose result includes the per-sample worst case over its attacks, then the
attack-failure checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustlab.evaluation.adversarial import AdversarialStage
from robustlab.evaluation.diagnostics import ChecksStage
from robustlab.evaluation.pipeline import Stage
from robustlab.evaluation.registry import SUITES
from robustlab.threat import Threat


@dataclass(frozen=True)
class Suite:
    """A named protocol: attack names and their keyword arguments."""

    attacks: tuple[str, ...]
    attack_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""

    @property
    def __doc__(self) -> str:  # Registry.describe reads the first line
        return self.description

    def attack_plan(
        self, overrides: dict[str, dict[str, Any]] | None = None
    ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """The suite's attack names and their keyword arguments, ``overrides[name]`` (e.g. from
        ``--attack-arg``) taking precedence key by key."""
        overrides = overrides or {}
        kwargs = {
            name: {**self.attack_kwargs.get(name, {}), **overrides.get(name, {})}
            for name in set(self.attack_kwargs) | set(overrides)
        }
        return list(self.attacks), kwargs

    def stages(
        self,
        threats: Sequence[str | Threat],
        overrides: dict[str, dict[str, Any]] | None = None,
        *,
        seed: int = 0,
        state_path: str | Path | None = None,
        probe_size: int = 100,
    ) -> list[Stage]:
        """The suite as evaluation stages at ``threats``, for
        :func:`robustlab.evaluation.run_stages`."""
        names, kwargs = self.attack_plan(overrides)
        parsed = [Threat.parse(t) for t in threats]
        return [
            AdversarialStage(names, parsed, kwargs, seed=seed, state_path=state_path),
            ChecksStage(probe_size),
        ]


SUITES.register(
    "autoattack-standard",
    Suite(("autoattack",), {"autoattack": {"version": "standard"}},
          "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square (Croce & Hein 2020)."),
)  # fmt: skip
SUITES.register(
    "autoattack-plus",
    Suite(("autoattack",), {"autoattack": {"version": "plus"}},
          "AutoAttack plus: 5 restarts of APGD-CE/DLR, FAB, Square, then APGD-T and FAB-T."),
)  # fmt: skip
SUITES.register(
    "autoattack-rand",
    Suite(("autoattack",), {"autoattack": {"version": "rand"}},
          "AutoAttack rand for randomized defences: APGD-CE and APGD-DLR with EOT (20 draws)."),
)  # fmt: skip
SUITES.register(
    "quick",
    Suite(("fgsm", "pgd", "apgd-ce"), {"pgd": {"steps": 20}, "apgd-ce": {"steps": 20}},
          "A fast first look: FGSM, PGD-20, APGD-CE with 20 steps."),
)  # fmt: skip
SUITES.register(
    "diverse",
    Suite(("apgd-ce", "apgd-dlr", "apgd-t", "md", "beta", "square"), {"square": {"queries": 1000}},
          "Diverse losses and a black box, each on all points: per-attack numbers + worst case."),
)  # fmt: skip
