"""Evaluation: clean and robust accuracy, per-class and worst-class, with provenance."""

from robustlab.evaluation.checks import CheckResult, run_checks
from robustlab.evaluation.evaluate import evaluate
from robustlab.evaluation.results import AttackEntry, EvaluationResult
from robustlab.evaluation.suites import SUITES, Suite
from robustlab.runtime.predict import predict

__all__ = [
    "SUITES",
    "AttackEntry",
    "CheckResult",
    "EvaluationResult",
    "Suite",
    "evaluate",
    "predict",
    "run_checks",
]
