"""``evaluate(model, dataset, attacks, threats)``: clean and robust accuracy with provenance.

Every attack runs at every threat on the same points, batch by batch. Besides each attack's robust
accuracy, its time, the points it received and the points still robust after it (and, for
ensembles such as AutoAttack, the same per sub-attack), the result holds the per-sample worst case
over the attacks at each threat (``"worst-case"``): a point counts as robust only if no attack
broke it. The attack-failure checks (``evaluation/checks.py``) are part of every result; each
finding of a check names its threat, the attack(s) and the points (their indices in ``dataset``).

Long runs are resumable: with ``state_path`` the per-sample progress is saved atomically after
every batch, and a later call with the same model, data and configuration continues from it.

Inside a ``torch.distributed`` process group (``torchrun``) each rank attacks every ``W``-th batch
(the single-process batch boundaries) and the per-sample results are merged with one all-reduce
per attack and threat, so a seeded evaluation gives the single-process numbers
(:mod:`robustlab.runtime.distributed`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks import Attack, build_attack
from robustlab.data import ArrayDataset
from robustlab.errors import RobustlabError
from robustlab.evaluation.checks import check_certified_not_broken, run_checks
from robustlab.evaluation.results import (
    WORST_CASE,
    AttackEntry,
    EvaluationResult,
    per_class_accuracy,
    worst_class,
)
from robustlab.io import atomic_torch_save
from robustlab.models import model_spec
from robustlab.progress import progress_bar
from robustlab.provenance import provenance
from robustlab.runtime.distributed import is_distributed, is_main, merge_shards, owns_batch
from robustlab.runtime.fastpaths import merge_fast_paths
from robustlab.runtime.predict import predict
from robustlab.threat import Threat
from robustlab.validation import check_int

STATE_SCHEMA = "robustlab-evaluation-state/1"


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


def fingerprint(model: nn.Module, dataset: ArrayDataset, config: dict[str, Any]) -> str:
    """Hash of the model weights, the data and the evaluation config (to validate a state file)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for t in (dataset.x, dataset.y, *model.state_dict().values()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class EvaluationState:
    """Per-(attack, threat) progress, saved atomically after every batch."""

    def __init__(self, path: str | Path | None, key: str, n_items: int, n: int) -> None:
        self.path = Path(path) if path is not None else None
        self.key = key
        self.items: list[dict[str, Any]] = [
            {"next": 0, "robust": torch.zeros(n, dtype=torch.bool), "time_s": 0.0,
             "forward_passes": 0, "breakdown": []}
            for _ in range(n_items)
        ]  # fmt: skip
        self.resumed = False
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = torch.load(self.path, weights_only=True)
        except Exception as e:  # truncated or foreign file
            raise RobustlabError(
                f"evaluation state {self.path} cannot be read ({type(e).__name__}); delete it to "
                "start over."
            ) from None
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            raise RobustlabError(f"{self.path} is not a robustlab evaluation state; delete it.")
        if data.get("key") != self.key or len(data.get("items", [])) != len(self.items):
            raise RobustlabError(
                f"evaluation state {self.path} belongs to a different model, dataset or "
                "configuration; delete it or write the result elsewhere."
            )
        self.items = data["items"]
        self.resumed = any(item["next"] > 0 for item in self.items)

    def save(self) -> None:
        if self.path is not None:
            atomic_torch_save(
                self.path, {"schema": STATE_SCHEMA, "key": self.key, "items": self.items}
            )


def evaluate(
    model: nn.Module,
    dataset: ArrayDataset,
    attacks: Sequence[str | Attack] = ("pgd",),
    threats: Sequence[str | Threat] = ("linf:0.3",),
    *,
    attack_kwargs: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    model_name: str | None = None,
    checks: bool = True,
    probe_size: int = 100,
    state_path: str | Path | None = None,
    certify: Sequence[str] = (),
    certify_kwargs: dict[str, dict[str, Any]] | None = None,
    corruptions: str | None = None,
    corruption_kwargs: dict[str, Any] | None = None,
) -> EvaluationResult:
    """Evaluate ``model`` on ``dataset`` under each attack at each threat.

    ``attacks`` are registered names (instantiated per threat with ``attack_kwargs[name]`` and
    ``seed``) or ready :class:`Attack` objects (used at their own threat only). ``checks`` runs
    the attack-failure checks on up to ``probe_size`` clean-correct points. With ``state_path``
    the progress is saved after every batch and an interrupted evaluation resumes from it.

    ``certify`` names certifiers (``robustlab.certify.CERTIFIERS``: ibp, crown-ibp, crown,
    smoothing, lipschitz) run at every threat, with options from ``certify_kwargs[name]``: their
    certified accuracy goes in ``sections["certification"]`` next to the robust accuracy, and a
    certified point broken by an attack raises the ``certified-but-broken`` check. ``corruptions``
    names a corruption set or list (e.g. ``"mnist-c"``) evaluated with
    :func:`robustlab.corruptions.evaluate_corruptions` (options in ``corruption_kwargs``, e.g.
    ``severities`` and ``baseline``) into ``sections["corruptions"]``.
    """
    check_int(batch_size, "batch_size")
    if state_path is not None and is_distributed():
        raise RobustlabError("state_path (resumable evaluation) is not supported across ranks.")
    dataset.validate()
    device = torch.device(device)
    model = model.to(device)
    attack_kwargs = attack_kwargs or {}
    unknown = set(attack_kwargs) - {a for a in attacks if isinstance(a, str)}
    if unknown:
        raise RobustlabError(
            f"attack_kwargs names attacks that are not evaluated: {sorted(unknown)}."
        )
    parsed = [Threat.parse(t) for t in threats]
    plan: list[tuple[str, Threat, Attack]] = []
    for a in attacks:
        if isinstance(a, Attack):
            plan.append((a.name, a.threat, a))
            continue
        for t in parsed:
            plan.append((a, t, build_attack(a, t, seed=seed, **attack_kwargs.get(a, {}))))
    x, y, k = dataset.x, dataset.y, dataset.num_classes

    spec = model_spec(model)
    config = {
        "model": spec,
        "dataset": dataset.name,
        "attacks": [a.config() for _, _, a in plan],
        "batch_size": batch_size,
    }
    state = EvaluationState(
        state_path,
        fingerprint(model, dataset, {**config, "seed": seed}) if state_path is not None else "",
        len(plan),
        len(x),
    )
    clean = predict(model, x, batch_size, device) == y
    entries: list[AttackEntry] = []
    worst: dict[Threat, Tensor] = {}
    masks: dict[tuple[str, Threat], Tensor] = {}
    breakdowns: dict[tuple[str, Threat], list[dict[str, Any]]] = {}
    with progress_bar(progress and is_main()) as bar:
        task = bar.add_task("evaluate", total=len(plan) * len(x))
        for (name, threat, attack), item in zip(plan, state.items):
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
            entries.append(
                _entry(
                    name, threat, robust, y, k, time_s=item["time_s"], config=attack.config(),
                    points_in=int(clean.sum()), points_out=int(robust.sum()),
                    forward_passes=item["forward_passes"], breakdown=item["breakdown"],
                )
            )  # fmt: skip
            masks[(name, threat)] = robust
            if item["breakdown"]:
                breakdowns[(name, threat)] = item["breakdown"]
            worst[threat] = worst.get(threat, clean) & robust
    if len({name for name, _, _ in plan}) > 1:
        entries += [_entry(WORST_CASE, t, r, y, k) for t, r in worst.items()]

    sections: dict[str, Any] = {}
    certified: dict[tuple[str, Threat], Tensor] = {}
    if certify:
        from robustlab.certify import CERTIFIERS
        from robustlab.certify import certify as run_certifier

        results = []
        for method in certify:
            options = (certify_kwargs or {}).get(method, {})
            usable = []
            last_error = RobustlabError(f"certification with '{method}' needs at least one threat.")
            for t in parsed:  # each certifier runs at the threats whose norm it certifies
                try:
                    CERTIFIERS.get(method)(t, **options)
                    usable.append(t)
                except RobustlabError as err:
                    last_error = err
            if not usable:
                raise last_error
            for t in usable:
                cert = run_certifier(
                    model, dataset, method, t, batch_size=batch_size, device=device, seed=seed,
                    progress=progress, **options,
                )  # fmt: skip
                if method != "smoothing":  # smoothing certifies the smoothed classifier only
                    certified[(method, t)] = cert.certified.cpu()
                results.append(cert.to_dict())
        sections["certification"] = results
    if corruptions is not None:
        from robustlab.corruptions import evaluate_corruptions

        sections["corruptions"] = evaluate_corruptions(
            model, dataset, corruption_set=corruptions, batch_size=batch_size, seed=seed,
            device=device, progress=progress, **(corruption_kwargs or {}),
        ).to_dict()  # fmt: skip
    check_list = []
    if checks and plan:
        found = run_checks(
            model, x.to(device), y.to(device), sorted({t for _, t, _ in plan}, key=str),
            robust=masks, breakdowns=breakdowns, probe_size=probe_size, seed=seed,
        )  # fmt: skip
        if certified:
            found.append(check_certified_not_broken(certified, masks))
        check_list = [c.to_dict() for c in found]
    pc = per_class_accuracy(clean, y, k)
    config["resumed"] = state.resumed
    return EvaluationResult(
        model=model_name or (spec["name"] if spec else type(model).__name__),
        dataset=dataset.name,
        n=len(x),
        num_classes=k,
        clean_accuracy=float(clean.float().mean()),
        per_class=pc,
        worst_class=worst_class(pc),
        attacks=entries,
        provenance={
            **provenance(seed=seed, device=device, config=config),
            "fast_paths": {  # which fast paths each attack took (robustlab.runtime.fastpaths)
                f"{name} {threat}": item.get("fast_paths", {})
                for (name, threat, _), item in zip(plan, state.items)
            },
        },
        checks=check_list,
        sections=sections,
    )
