"""Evaluation results: JSON first. The store and the reports read what :meth:`to_dict` writes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustlab.errors import RobustlabError
from robustlab.io import atomic_write_json

WORST_CASE = "worst-case"
SCHEMA = "robustlab-evaluation/1"


def per_class_accuracy(correct: Tensor, y: Tensor, num_classes: int) -> list[float | None]:
    """Accuracy within each class (None for a class absent from ``y``)."""
    counts = torch.bincount(y, minlength=num_classes).float()
    hits = torch.bincount(y, weights=correct.float(), minlength=num_classes)
    return [float(h / c) if c > 0 else None for h, c in zip(hits, counts)]


def worst_class(per_class: list[float | None]) -> float:
    present = [a for a in per_class if a is not None]
    return min(present) if present else float("nan")


@dataclass
class AttackEntry:
    """Robust accuracy of one attack (or the per-sample worst case over attacks) at one threat."""

    attack: str
    threat: str
    norm: str
    eps: float
    robust_accuracy: float
    per_class: list[float | None]
    worst_class: float
    n: int
    time_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    points_in: int = 0  # clean-correct points the attack received
    points_out: int = 0  # points still robust after it
    forward_passes: int = 0
    #: ensembles (AutoAttack): per sub-attack {attack, points_in, points_out, time_s, ...}
    breakdown: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvaluationResult:
    """Clean and robust accuracy of one model on one dataset, with provenance."""

    model: str
    dataset: str
    n: int
    num_classes: int
    clean_accuracy: float
    per_class: list[float | None]
    worst_class: float
    attacks: list[AttackEntry] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)  # certification, corruptions, ...
    provenance: dict[str, Any] = field(default_factory=dict)
    #: attack-failure checks (evaluation/checks.py): {name, flag, share, meaning, summary,
    #: details}; details["findings"] name the threat, attack(s) and points of each finding
    checks: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ queries
    def robust_accuracy(self, attack: str, threat: str) -> float:
        """Robust accuracy of ``attack`` (or ``"worst-case"``) at ``threat`` (e.g. "linf:0.3")."""
        from robustlab.threat import Threat

        want = Threat.parse(threat)
        for e in self.attacks:
            if e.attack == attack and e.norm == want.norm and abs(e.eps - want.eps) < 1e-12:
                return e.robust_accuracy
        raise RobustlabError(f"No result for attack '{attack}' at threat '{threat}'.")

    def raised_checks(self) -> list[dict[str, Any]]:
        """The attack-failure checks whose flag is raised."""
        return [c for c in self.checks if c.get("flag")]

    def curves(self) -> dict[str, list[tuple[float, float]]]:
        """``"attack norm"`` -> [(eps, robust accuracy)] sorted by eps, eps 0 = clean accuracy."""
        out: dict[str, list[tuple[float, float]]] = {}
        for e in self.attacks:
            out.setdefault(f"{e.attack} {e.norm}", [(0.0, self.clean_accuracy)]).append(
                (e.eps, e.robust_accuracy)
            )
        return {k: sorted(set(v)) for k, v in out.items()}

    # ------------------------------------------------------------------ JSON round trip
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        if data.get("schema") != SCHEMA:
            raise RobustlabError(
                f"not a robustlab evaluation result (schema {data.get('schema')!r})."
            )
        fields = {k: v for k, v in data.items() if k != "schema"}
        fields["attacks"] = [AttackEntry(**a) for a in fields.get("attacks", [])]
        return cls(**fields)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> EvaluationResult:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise RobustlabError(f"result file {path} does not exist.") from None
        except json.JSONDecodeError as e:
            raise RobustlabError(f"result file {path} is not valid JSON ({e.msg}).") from None
        return cls.from_dict(data)
