"""What an attack-failure check reports (:mod:`robustlab.evaluation.checks`): the
:class:`CheckResult` with its flag, share and meaning, and its :class:`Finding` s, each naming the
threat, the attack(s) and the points (count and first ``MAX_INDICES`` dataset indices), in words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

#: a finding lists the dataset indices of at most this many of its points (and counts them all)
MAX_INDICES = 20
#: a flag is raised when the share exceeds this (0: any point at all)
THRESHOLDS = {
    "zero-gradients": 0.0,
    "randomness": 0.0,
    "unbounded-attack": 0.01,
    "eps-monotonicity": 0.0,
    "steps-monotonicity": 0.0,
    "black-box-beats-white-box": 0.02,
    "loss-not-increasing": 0.05,
    "certified-but-broken": 0.0,
}
MEANINGS = {
    "zero-gradients": "Some points have zero, NaN or infinite input gradients, so gradient attacks "
    "cannot move them and the robust accuracy may be overestimated (gradient masking).",
    "randomness": "The model gives different outputs for identical inputs, so single-draw "
    "gradients are noisy; evaluate with EOT (AutoAttack version 'rand').",
    "unbounded-attack": "An attack with an unbounded budget failed to break every point, so the "
    "attacks are failing (masked gradients or a broken attack), not the model resisting.",
    "eps-monotonicity": "Robust accuracy increases with eps, which is impossible for a working "
    "attack; the attack fails at the larger radius.",
    "steps-monotonicity": "Robust accuracy increases with more attack steps, which points to "
    "randomness in the model or an unstable attack.",
    "black-box-beats-white-box": "A black-box attack broke points that every white-box attack "
    "missed: the white-box attacks are too weak for this model (more steps, restarts, APGD-T) or "
    "its gradients are masked, so the robust accuracy is overestimated.",
    "loss-not-increasing": "The attack objective did not increase along the iterations on many "
    "points, so the optimisation is not working (flat or masked loss surface).",
    "certified-but-broken": "An attack broke points that a certificate proved robust at the same "
    "threat, so either the bound is unsound or the attack left the threat model: a bug.",
}


@dataclass
class Finding:
    """What a check found in one place: the threat, the attack (and the attacks it is compared
    with), the points concerned (``count`` of ``of``, the first ``MAX_INDICES`` dataset indices),
    this finding's share (the quantity the check's flag compares with its threshold) and one
    sentence saying all of it."""

    text: str
    share: float
    count: int
    of: int
    indices: list[int]
    threat: str | None = None
    attack: str | None = None
    against: list[str] = field(default_factory=list)
    source: str = "probe"  # probe (the checks' own attacks), evaluation, ensemble, model


@dataclass
class CheckResult:
    """One attack-failure check: raised or not, the share concerned, what it means, and where."""

    name: str
    flag: bool
    share: float
    meaning: str
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_check(
    name: str, findings: Sequence[Finding] = (), share: float | None = None, **details: Any
) -> CheckResult:
    """The check ``name`` from its findings; its share is the largest finding's unless given."""
    found = sorted(findings, key=lambda f: -f.share)
    if share is None:
        share = max((f.share for f in found), default=0.0)
    share = float(share) if math.isfinite(share) else 1.0
    summary = " ".join(f.text for f in found)
    return CheckResult(
        name, share > THRESHOLDS[name], share, MEANINGS[name], summary,
        {"findings": [asdict(f) for f in found], **details},
    )  # fmt: skip


# --------------------------------------------------------------------------- wording
def points_of(mask: Tensor, index: Tensor | None = None) -> tuple[int, list[int]]:
    """(number of True entries of ``mask``, the first ``MAX_INDICES`` of their dataset indices);
    ``index`` maps the rows of ``mask`` to dataset indices (identity when None)."""
    pos = mask.nonzero().squeeze(1)
    if index is not None:
        pos = index.to(pos.device)[pos]
    return int(pos.numel()), pos[:MAX_INDICES].cpu().tolist()


def points_text(count: int, of: int, indices: Sequence[int], what: str = "points") -> str:
    text = f"{count} of {of} {what}"
    if indices:
        more = f", … ({count - len(indices)} more)" if count > len(indices) else ""
        text += f" (indices {', '.join(map(str, indices))}{more})"
    return text


def names_text(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def missed_by(white: Sequence[str]) -> str:
    white = list(white)
    return f"{white[0]} missed" if len(white) == 1 else f"all of {names_text(white)} missed"


def finding(text: str, mask: Tensor, of: int, index: Tensor | None, **kw: Any) -> Finding:
    """A finding about the points of ``mask``; ``{points}`` in ``text`` names them."""
    count, indices = points_of(mask, index)
    what = "probe points" if kw.get("source", "probe") == "probe" else "points"
    share = kw.pop("share", count / max(1, of))
    return Finding(
        text.replace("{points}", points_text(count, of, indices, what)),
        float(share), count, of, indices, **kw,
    )  # fmt: skip
