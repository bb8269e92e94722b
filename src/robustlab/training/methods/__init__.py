"""Training methods by name. Each module registers its methods on :data:`METHODS`."""

# Method modules register on import in METHODS (robustlab.training.methods.registry); keep this
# list explicit (no import-time scanning).
from robustlab.training.methods import (  # noqa: F401
    adversarial,
    auxiliary,
    certified,
    distillation,
    forgetting,
    mixing,
    noisy,
    nonzero_sum,
    regularized,
    reweighted,
    standard,
    vat,
    weight_perturbation,
)
from robustlab.training.methods.registry import METHODS

__all__ = ["METHODS"]
