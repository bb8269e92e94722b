"""Bound-propagation operators, one class per layer family (see :mod:`.base` for the interface),
and :data:`OPERATORS`, the table from each supported exact ``nn`` type to its operator class.

Adding a layer type is one operator class (``compile``, ``forward``, ``interval``, ``backward``
and, for a non-linear one, ``relax``), one line here and one test in
``tests/test_certify_operators.py``.
"""

from torch import nn

from robustlab.certify.liresnet import LiResNetBlock
from robustlab.certify.operators.add import AddOp
from robustlab.certify.operators.base import (
    AffineOp,
    Builder,
    Interval,
    Operator,
    Refused,
    Shape,
)
from robustlab.certify.operators.conv import AvgPoolOp, ConvOp
from robustlab.certify.operators.linear import LinearOp, WeightOp
from robustlab.certify.operators.relu import LOWER_SLOPES, Relaxation, ReLUOp, relu_relaxation
from robustlab.certify.operators.reshape import IdentityOp, ReshapeOp
from robustlab.certify.operators.scale import BatchNormOp, ScaleOp
from robustlab.models.layers import Normalize, Residual

#: exact layer type -> operator class, in the order the error messages list them. Exact types
#: only: a subclass -- even of ``nn.ReLU`` -- may override ``forward`` and compute something
#: else. ``LiResNetBlock`` is a ``Residual`` that only changes the construction.
OPERATORS: dict[type[nn.Module], type[Operator]] = {
    nn.Linear: LinearOp,
    nn.Conv2d: ConvOp,
    nn.ReLU: ReLUOp,
    nn.Flatten: ReshapeOp,
    nn.Identity: IdentityOp,
    nn.BatchNorm1d: BatchNormOp,
    nn.BatchNorm2d: BatchNormOp,
    nn.AvgPool2d: AvgPoolOp,
    nn.AdaptiveAvgPool2d: AvgPoolOp,
    Normalize: ScaleOp,
    Residual: AddOp,
    LiResNetBlock: AddOp,
}

__all__ = [
    "LOWER_SLOPES",
    "OPERATORS",
    "AddOp",
    "AffineOp",
    "AvgPoolOp",
    "BatchNormOp",
    "Builder",
    "ConvOp",
    "IdentityOp",
    "Interval",
    "LinearOp",
    "Operator",
    "ReLUOp",
    "Refused",
    "Relaxation",
    "ReshapeOp",
    "ScaleOp",
    "Shape",
    "WeightOp",
    "relu_relaxation",
]
