"""The diagnostics stage: the attack-failure checks (:mod:`robustlab.evaluation.checks`) on what
the adversarial and certified stages found; each finding names its threat, the attack(s) and the
points (their indices in the dataset)."""

from __future__ import annotations

from robustlab.evaluation.checks import check_certified_not_broken, run_checks
from robustlab.evaluation.pipeline import Context, Stage


class ChecksStage(Stage):
    """The attack-failure checks on up to ``probe_size`` clean-correct points, at the threats the
    attacks ran at, and ``certified-but-broken`` when a certifier ran; runs last."""

    name = "checks"

    def __init__(self, probe_size: int = 100) -> None:
        self.probe_size = probe_size

    def run(self, ctx: Context) -> None:
        if not ctx.robust:  # no attack ran
            return
        found = run_checks(
            ctx.model, ctx.dataset.x.to(ctx.device), ctx.dataset.y.to(ctx.device),
            sorted({t for _, t in ctx.robust}, key=str), robust=ctx.robust,
            breakdowns=ctx.breakdowns, probe_size=self.probe_size, seed=ctx.seed,
        )  # fmt: skip
        if ctx.certified:
            found.append(check_certified_not_broken(ctx.certified, ctx.robust))
        ctx.checks = [c.to_dict() for c in found]
