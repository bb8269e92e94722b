"""Evaluation as a pipeline of stages.

A :class:`Stage` is configured once (its attacks, certifiers or corruptions, its threats, all
validated when it is built) and then run on a model: it reads and extends the :class:`Context`
that the stages before it filled. :func:`run_stages` computes the clean predictions, runs the
stages in order and assembles one :class:`~robustlab.evaluation.results.EvaluationResult`.
:func:`robustlab.evaluation.evaluate` and the suites (``evaluation/suites.py``) are compositions
of the stages:

* :class:`~robustlab.evaluation.adversarial.AdversarialStage` -- robust accuracy per attack and
  threat, and the per-sample worst case (resumable, sharded over ``torch.distributed``);
* :class:`~robustlab.evaluation.certified.CertifiedStage` -- certified accuracy;
* :class:`~robustlab.evaluation.corruptions.CorruptionStage` -- accuracy, calibration and flip
  rates under common corruptions;
* :class:`~robustlab.evaluation.diagnostics.ChecksStage` -- the attack-failure checks, last,
  since they read what the others found.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from robustlab.data import ArrayDataset
from robustlab.evaluation.results import (
    AttackEntry,
    EvaluationResult,
    per_class_accuracy,
    worst_class,
)
from robustlab.models import model_spec
from robustlab.provenance import provenance
from robustlab.runtime.predict import predict
from robustlab.threat import Threat
from robustlab.validation import check_int

#: (attack or certifier name, threat) -> per-sample mask over the dataset
Masks = dict[tuple[str, Threat], Tensor]


@dataclass
class Context:
    """One evaluation run: the model, data and run options every stage shares, and what the
    stages found so far."""

    model: nn.Module
    dataset: ArrayDataset
    batch_size: int
    device: torch.device
    seed: int
    progress: bool
    clean: Tensor  # clean-correct mask over the dataset
    config: dict[str, Any]  # the run's configuration, for provenance
    entries: list[AttackEntry] = field(default_factory=list)
    robust: Masks = field(default_factory=dict)  # still robust after each attack
    breakdowns: dict[tuple[str, Threat], list[dict[str, Any]]] = field(default_factory=dict)
    certified: Masks = field(default_factory=dict)  # proven robust by each certifier
    sections: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    fast_paths: dict[str, dict[str, Any]] = field(default_factory=dict)


class Stage(ABC):
    """One part of an evaluation, configured once and run on any model."""

    name: ClassVar[str] = "stage"

    def config(self) -> dict[str, Any]:
        """What this stage adds to the run's provenance config (before it runs)."""
        return {}

    @abstractmethod
    def run(self, ctx: Context) -> None:
        """Evaluate ``ctx.model`` on ``ctx.dataset`` and record the findings in ``ctx``."""


def run_stages(
    model: nn.Module,
    dataset: ArrayDataset,
    stages: Sequence[Stage],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    model_name: str | None = None,
) -> EvaluationResult:
    """Run ``stages`` in order on ``model`` and ``dataset``; the clean accuracy comes first."""
    check_int(batch_size, "batch_size")
    dataset.validate()
    device = torch.device(device)
    model = model.to(device)
    spec = model_spec(model)
    config: dict[str, Any] = {"model": spec, "dataset": dataset.name}
    for stage in stages:
        config.update(stage.config())
    config["batch_size"] = batch_size
    x, y, k = dataset.x, dataset.y, dataset.num_classes
    ctx = Context(
        model, dataset, batch_size, device, seed, progress,
        clean=predict(model, x, batch_size, device) == y, config=config,
    )  # fmt: skip
    for stage in stages:
        stage.run(ctx)
    pc = per_class_accuracy(ctx.clean, y, k)
    return EvaluationResult(
        model=model_name or (spec["name"] if spec else type(model).__name__),
        dataset=dataset.name,
        n=len(x),
        num_classes=k,
        clean_accuracy=float(ctx.clean.float().mean()),
        per_class=pc,
        worst_class=worst_class(pc),
        attacks=ctx.entries,
        provenance={
            **provenance(seed=seed, device=device, config=ctx.config),
            # which fast paths each attack took (robustlab.runtime.fastpaths)
            "fast_paths": ctx.fast_paths,
        },
        checks=ctx.checks,
        sections=ctx.sections,
    )
