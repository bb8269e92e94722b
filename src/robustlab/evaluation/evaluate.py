"""``evaluate(model, dataset, attacks, threats)``: clean and robust accuracy with provenance.

A composition of the evaluation stages (:mod:`robustlab.evaluation.pipeline`): the adversarial
stage (every attack at every threat on the same points, the per-sample worst case over the
attacks, resumable with ``state_path``, sharded inside a ``torch.distributed`` process group),
then optionally certification and corruptions, then the attack-failure checks. Every argument is
validated, and every threat parsed, here, before any model runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Attack
from robustlab.data import ArrayDataset
from robustlab.evaluation.adversarial import AdversarialStage
from robustlab.evaluation.certified import CertifiedStage
from robustlab.evaluation.corruptions import CorruptionStage
from robustlab.evaluation.diagnostics import ChecksStage
from robustlab.evaluation.pipeline import Stage, run_stages
from robustlab.evaluation.results import EvaluationResult
from robustlab.threat import Threat


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
    :func:`robustlab.evaluation.evaluate_corruptions` (options in ``corruption_kwargs``, e.g.
    ``severities`` and ``baseline``) into ``sections["corruptions"]``.
    """
    parsed = [Threat.parse(t) for t in threats]
    stages: list[Stage] = [
        AdversarialStage(attacks, parsed, attack_kwargs, seed=seed, state_path=state_path)
    ]
    if certify:
        stages.append(CertifiedStage(certify, parsed, certify_kwargs))
    if corruptions is not None:
        stages.append(CorruptionStage(corruptions, **(corruption_kwargs or {})))
    if checks:
        stages.append(ChecksStage(probe_size))
    return run_stages(
        model, dataset, stages, batch_size=batch_size, device=device, seed=seed,
        progress=progress, model_name=model_name,
    )  # fmt: skip
