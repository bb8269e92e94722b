"""The adversarial stage: every attack at every threat on the same points, batch by batch.

Besides each attack's robust accuracy, its time, the points it received and the points still
robust after it (and, for ensembles such as AutoAttack, the same per sub-attack), the stage records
the per-sample worst case over the attacks at each threat (``"worst-case"``): a point counts as
robust only if no attack broke it.

Long runs are resumable: with ``state_path`` the per-sample progress is saved atomically after
every batch (:mod:`robustlab.evaluation.state`), and a later run with the same model, data and
configuration continues from it.

Inside a ``torch.distributed`` process group (``torchrun``) each rank attacks every ``W``-th batch
(the single-process batch boundaries) and the per-sample results are merged with one all-reduce
per attack and threat, so a seeded evaluation gives the single-process numbers
(:mod:`robustlab.runtime.distributed`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from robustlab.attacks import Attack, build_attack
from robustlab.errors import RobustlabError
from robustlab.evaluation.pipeline import Context, Stage
from robustlab.evaluation.results import WORST_CASE, AttackEntry, per_class_accuracy, worst_class
from robustlab.evaluation.state import EvaluationState, fingerprint
from robustlab.progress import progress_bar
from robustlab.runtime.distributed import is_distributed, is_main, merge_shards, owns_batch
from robustlab.runtime.fastpaths import merge_fast_paths
from robustlab.threat import Threat


def _entry(name: str, threat: Threat, robust: Tensor, y: Tensor, k: int, **kw: Any) -> AttackEntry:
    pc = per_class_accuracy(robust, y, k)
    return AttackEntry(
        attack=name,
        threat=str(threat),
        norm=threat.norm,
        eps=threat.eps,
        robust_accuracy=float(robust.float().mean()),
        per_class=pc,
        worst_class=worst_class(pc),
        n=len(y),
        **kw,
    )


def _merge_breakdown(total: list[dict[str, Any]], batch: list[dict[str, Any]]) -> None:
    """Sum an ensemble's per-sub-attack records over batches."""
    if not total:
        total.extend({**row} for row in batch)
        return
    for acc, row in zip(total, batch):
        for key in ("points_in", "points_out", "time_s", "forward_passes"):
            acc[key] = acc.get(key, 0) + row.get(key, 0)


class AdversarialStage(Stage):
    """Robust accuracy under each attack at each threat, and the worst case over the attacks.

    ``attacks`` are registered names (instantiated per threat with ``attack_kwargs[name]`` and
    ``seed``) or ready :class:`Attack` objects (used at their own threat only). With
    ``state_path`` the progress is saved after every batch and an interrupted run resumes from it.
    """

    name = "adversarial"

    def __init__(
        self,
        attacks: Sequence[str | Attack],
        threats: Sequence[Threat],
        attack_kwargs: dict[str, dict[str, Any]] | None = None,
        *,
        seed: int = 0,
        state_path: str | Path | None = None,
    ) -> None:
        if state_path is not None and is_distributed():
            raise RobustlabError("state_path (resumable evaluation) is not supported across ranks.")
        attack_kwargs = attack_kwargs or {}
        unknown = set(attack_kwargs) - {a for a in attacks if isinstance(a, str)}
        if unknown:
            raise RobustlabError(
                f"attack_kwargs names attacks that are not evaluated: {sorted(unknown)}."
            )
        self.plan: list[tuple[str, Threat, Attack]] = []
        for a in attacks:
            if isinstance(a, Attack):
                self.plan.append((a.name, a.threat, a))
                continue
            for t in threats:
                self.plan.append((a, t, build_attack(a, t, seed=seed, **attack_kwargs.get(a, {}))))
        self.state_path = state_path

    def config(self) -> dict[str, Any]:
        return {"attacks": [a.config() for _, _, a in self.plan]}

    def run(self, ctx: Context) -> None:
        model, device, batch_size = ctx.model, ctx.device, ctx.batch_size
        x, y, k = ctx.dataset.x, ctx.dataset.y, ctx.dataset.num_classes
        key = ""
        if self.state_path is not None:
            key = fingerprint(model, ctx.dataset, {
                "model": ctx.config["model"], "dataset": ctx.dataset.name, **self.config(),
                "batch_size": batch_size, "seed": ctx.seed,
            })  # fmt: skip
        state = EvaluationState(self.state_path, key, len(self.plan), len(x))
        clean = ctx.clean
        worst: dict[Threat, Tensor] = {}
        with progress_bar(ctx.progress and is_main()) as bar:
            task = bar.add_task("evaluate", total=len(self.plan) * len(x))
            for (name, threat, attack), item in zip(self.plan, state.items):
                bar.update(task, description=f"{name} {threat}", advance=item["next"])
                for i in range(item["next"], len(x), batch_size):
                    if not owns_batch(i // batch_size):  # torch.distributed: another rank's batch
                        continue
                    xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
                    t0 = time.perf_counter()
                    res = attack.run(model, xb, yb)
                    item["time_s"] += time.perf_counter() - t0
                    item["robust"][i : i + len(xb)] = res.robust.cpu()
                    item["forward_passes"] += res.forward_passes
                    _merge_breakdown(item["breakdown"], res.extras.get("attacks", []))
                    merge_fast_paths(
                        item.setdefault("fast_paths", {}), res.extras.get("fast_paths", {})
                    )
                    item["next"] = i + len(xb)
                    state.save()
                    bar.update(task, advance=len(xb))
                item["robust"], counts = merge_shards(
                    item["robust"], {"forward_passes": item["forward_passes"]}
                )  # every rank's batches, gathered once (the identity in one process)
                item["forward_passes"] = int(counts["forward_passes"])
                robust = item["robust"] & clean
                ctx.entries.append(
                    _entry(
                        name, threat, robust, y, k, time_s=item["time_s"], config=attack.config(),
                        points_in=int(clean.sum()), points_out=int(robust.sum()),
                        forward_passes=item["forward_passes"], breakdown=item["breakdown"],
                    )
                )  # fmt: skip
                ctx.robust[(name, threat)] = robust
                if item["breakdown"]:
                    ctx.breakdowns[(name, threat)] = item["breakdown"]
                worst[threat] = worst.get(threat, clean) & robust
        if len({name for name, _, _ in self.plan}) > 1:
            ctx.entries += [_entry(WORST_CASE, t, r, y, k) for t, r in worst.items()]
        ctx.config["resumed"] = state.resumed
        ctx.fast_paths.update({
            f"{name} {threat}": item.get("fast_paths", {})
            for (name, threat, _), item in zip(self.plan, state.items)
        })  # fmt: skip
