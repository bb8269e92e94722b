"""Certification: provable robustness of a classifier.

* bound propagation -- :func:`compute_bounds` / :func:`margin_bounds` with ``method`` ``"ibp"``
  (Gowal et al. 2018), ``"crown-ibp"`` (Zhang et al. 2020) or ``"crown"`` (Zhang et al. 2018) for
  models built from Linear, Conv2d, ReLU, Flatten, BatchNorm, average pooling, Normalize and
  Residual layers (matched by exact type, no forward hooks, the compiled graph checked against
  ``model(x)`` on every bounded batch), on Linf or L2 balls intersected with [0, 1]; each layer
  type is one operator class holding its forward, interval and linear-relaxation rules
  (:mod:`robustlab.certify.operators`);
* randomized smoothing -- :class:`SmoothedClassifier` (Cohen et al. 2019);
* Lipschitz margins -- :class:`LipschitzCertifier`, :class:`LiResNetBlock`, the EMMA loss
  (Hu et al. 2023);
* :func:`certify` -- certified accuracy of a model on a dataset with any of them, by name
  (:data:`CERTIFIERS`), as a :class:`CertificationResult`;
* :func:`propagation_tightness` -- the IBP tightness metric of Mao et al. 2024.
"""

from robustlab.certify.bounds import BOUND_METHODS, compute_bounds, margin_bounds
from robustlab.certify.certifier import CERTIFIERS, CertificationResult, Certifier, certify
from robustlab.certify.crown import crown_bounds, crown_ibp_bounds
from robustlab.certify.graph import (
    SUPPORTED_LAYERS,
    GraphMismatchError,
    UnsupportedLayerError,
    compile_model,
    verify_graph,
)
from robustlab.certify.ibp import ibp_bounds, interval_bounds
from robustlab.certify.lipschitz import (
    LipschitzCertifier,
    emma_logits,
    emma_loss,
    lipschitz_certify,
)
from robustlab.certify.liresnet import LiResNetBlock
from robustlab.certify.smoothing import SmoothedClassifier
from robustlab.certify.spec import margin_spec, verified, worst_margin
from robustlab.certify.tightness import propagation_tightness

__all__ = [
    "BOUND_METHODS",
    "CERTIFIERS",
    "SUPPORTED_LAYERS",
    "CertificationResult",
    "Certifier",
    "GraphMismatchError",
    "LiResNetBlock",
    "LipschitzCertifier",
    "SmoothedClassifier",
    "UnsupportedLayerError",
    "certify",
    "compile_model",
    "compute_bounds",
    "crown_bounds",
    "crown_ibp_bounds",
    "emma_logits",
    "emma_loss",
    "ibp_bounds",
    "interval_bounds",
    "lipschitz_certify",
    "margin_bounds",
    "margin_spec",
    "propagation_tightness",
    "verified",
    "verify_graph",
    "worst_margin",
]
