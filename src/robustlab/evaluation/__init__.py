"""Evaluation: clean and robust accuracy, per-class and worst-class, with provenance.

An evaluation is a pipeline of stages (:mod:`robustlab.evaluation.pipeline`): adversarial,
certified, corruptions and the attack-failure checks; :func:`evaluate` and the suites compose
them.
"""

from robustlab.evaluation.adversarial import AdversarialStage
from robustlab.evaluation.certified import CertifiedStage
from robustlab.evaluation.checks import run_checks
from robustlab.evaluation.corruptions import CorruptionStage, evaluate_corruptions
from robustlab.evaluation.diagnostics import ChecksStage
from robustlab.evaluation.evaluate import evaluate
from robustlab.evaluation.findings import CheckResult
from robustlab.evaluation.pipeline import Context, Stage, run_stages
from robustlab.evaluation.results import AttackEntry, EvaluationResult
from robustlab.evaluation.suites import SUITES, Suite
from robustlab.runtime.predict import predict

__all__ = [
    "SUITES",
    "AdversarialStage",
    "AttackEntry",
    "CertifiedStage",
    "CheckResult",
    "ChecksStage",
    "Context",
    "CorruptionStage",
    "EvaluationResult",
    "Stage",
    "Suite",
    "evaluate",
    "evaluate_corruptions",
    "predict",
    "run_checks",
    "run_stages",
]
